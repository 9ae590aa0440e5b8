//! The Docker Engine adapter of agentctl: [`DockerRuntime`] implements
//! [`agent_core::ContainerRuntime`] over bollard.
//!
//! It connects the way the docker CLI does (`DOCKER_HOST`: `unix://` socket or `tcp://`, with TLS from
//! `DOCKER_CERT_PATH` when `DOCKER_TLS_VERIFY` is set), negotiates the API version, and turns engine answers
//! into domain facts: an inspect becomes a [`ContainerSpec`] holding only what the
//! user configured (the image's own defaults are told apart by inspecting the image), a 404 becomes
//! `ContainerNotFound { container }`, a 409 a `Conflict`. No bollard type crosses this crate's public API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use agent_core::ContainerRuntime;
//! let docker = agent_docker::DockerRuntime::connect(None).await?;
//! let info = docker.inspect_container("node-agent").await?;
//! println!("{} runs {}", info.spec.name, info.spec.image);
//! # Ok(()) }
//! ```
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod build;
mod carried;
mod convert;
mod exec;
mod images;
pub mod lint;
mod raw;
mod records;
mod swarm;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use agent_core::{
    async_trait, ContainerInfo, ContainerRuntime, ContainerSpec, ContainerStatus, ContainerSummary, EngineInfo,
    ImageInfo, ImageRef, LogLine, LogStream, ProgressFn, PullProgress, RestartPolicy, RuntimeError, SecretPolicy,
};
use bollard::query_parameters as qp;
use bollard::Docker;
use futures_util::StreamExt;
use time::OffsetDateTime;

pub use images::{BuildContext, BuildFile};

/// The default engine endpoint on Unix.
pub use agent_core::DEFAULT_ENDPOINT;

/// Why a connection to an engine could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint is not a `unix://`, `tcp://`, `http://` or `https://` address.
    #[error("unsupported engine endpoint {endpoint:?}: use unix:///path/to/docker.sock or tcp://HOST:PORT")]
    UnsupportedEndpoint {
        /// The endpoint.
        endpoint: String,
    },
    /// TLS was asked for but the certificates are missing.
    #[error("TLS for {endpoint} needs {missing} in {dir}; set DOCKER_CERT_PATH to the folder holding ca.pem, cert.pem and key.pem")]
    MissingCertificate {
        /// The endpoint.
        endpoint: String,
        /// The folder searched.
        dir: String,
        /// The missing file.
        missing: &'static str,
    },
    /// A TLS file is unusable, or the engine and the files do not agree.
    #[error("TLS to {endpoint}: {file} {problem}; fix or replace it (DOCKER_CERT_PATH names the folder)")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// The file at fault.
        file: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The client could not be built or the engine did not answer.
    #[error("cannot reach the Docker engine at {endpoint}: {message}; is it running, and is DOCKER_HOST right?")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        message: String,
    },
}

/// A Docker engine reached through bollard.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    endpoint: String,
    api_version: String,
    secrets: SecretPolicy,
    plain_tcp_remote: bool,
    cpu_samples: std::sync::Arc<std::sync::Mutex<HashMap<String, convert::CpuSample>>>,
    /// The raw exchange for what bollard's types cannot carry, over the same kind of connection.
    pub(crate) raw: raw::RawClient,
}

fn is_loopback_endpoint(endpoint: &str) -> bool {
    let rest = endpoint.split("://").nth(1).unwrap_or(endpoint);
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// A [`Connector`](agent_core::Connector) for fleets: each endpoint is connected as
/// [`DockerRuntime::connect`] does (an empty endpoint means `DOCKER_HOST`, else the local socket), with
/// `policy` deciding which env values are secret. A connection failure is
/// [`RuntimeError::Unavailable`] naming the endpoint.
pub fn connector(policy: agent_core::SecretPolicy) -> agent_core::Connector {
    std::sync::Arc::new(move |endpoint: String| {
        let policy = policy.clone();
        Box::pin(async move {
            let host = (!endpoint.is_empty()).then_some(endpoint.as_str());
            match DockerRuntime::connect(host).await {
                Ok(d) => Ok(std::sync::Arc::new(d.with_secret_policy(policy)) as std::sync::Arc<dyn ContainerRuntime>),
                Err(e) => Err(RuntimeError::Unavailable {
                    endpoint: endpoint.clone(),
                    message: e.to_string(),
                }),
            }
        })
    })
}

/// `endpoint` in its one written form on this machine (see [`agent_core::normalize_endpoint`]): a unix
/// socket by its real path (a symlinked `/var/run` is one socket with `/run`), the default socket by its
/// default name.
pub fn canonical_endpoint(endpoint: &str) -> String {
    agent_core::normalize_endpoint(endpoint, &|path| {
        std::fs::canonicalize(path)
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    })
}

impl DockerRuntime {
    /// Connects to `endpoint`, or to `DOCKER_HOST`, or to the local socket, and negotiates the API version.
    pub async fn connect(endpoint: Option<&str>) -> Result<DockerRuntime, Error> {
        let endpoint = endpoint
            .map(str::to_owned)
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        // One engine, one name: however the address was written, its history and locks are found.
        let endpoint = canonical_endpoint(&endpoint);
        let connect_err = |e: bollard::errors::Error| Error::Connect {
            endpoint: endpoint.clone(),
            message: e.to_string(),
        };
        let timeout = 120;
        let tls = std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut plain_tcp_remote = false;
        let mut tls_files = None;
        let mut connector = None;
        let docker = if let Some(path) = endpoint.strip_prefix("unix://") {
            Docker::connect_with_unix(path, timeout, bollard::API_DEFAULT_VERSION).map_err(connect_err)?
        } else if endpoint.starts_with("tcp://") || endpoint.starts_with("http://") || endpoint.starts_with("https://")
        {
            if tls || endpoint.starts_with("https://") {
                let dir = std::env::var("DOCKER_CERT_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".docker"));
                let file = |name: &'static str| {
                    let p = dir.join(name);
                    if p.exists() {
                        Ok(p)
                    } else {
                        Err(Error::MissingCertificate {
                            endpoint: endpoint.clone(),
                            dir: dir.display().to_string(),
                            missing: name,
                        })
                    }
                };
                let (key, cert, ca) = (file("key.pem")?, file("cert.pem")?, file("ca.pem")?);
                // Checked here so that a bad file is named, not reported as an engine that does not answer.
                connector = Some(
                    raw::tls_connector(&key, &cert, &ca).map_err(|(file, problem)| Error::Tls {
                        endpoint: endpoint.clone(),
                        file: file.display().to_string(),
                        problem,
                    })?,
                );
                tls_files = Some([key.clone(), cert.clone(), ca.clone()]);
                Docker::connect_with_ssl(&endpoint, &key, &cert, &ca, timeout, bollard::API_DEFAULT_VERSION)
                    .map_err(connect_err)?
            } else {
                plain_tcp_remote = !is_loopback_endpoint(&endpoint);
                if plain_tcp_remote {
                    tracing::warn!(
                        endpoint = %endpoint,
                        "plain TCP to a remote Docker engine: anyone on the network can control it; use TLS (DOCKER_TLS_VERIFY=1, DOCKER_CERT_PATH)"
                    );
                }
                Docker::connect_with_http(&endpoint, timeout, bollard::API_DEFAULT_VERSION).map_err(connect_err)?
            }
        } else {
            return Err(Error::UnsupportedEndpoint { endpoint });
        };
        // bollard sends unversioned paths, so the engine answers in its own version; negotiate anyway so the
        // version we report (and rely on) is the engine's.
        let docker = docker.negotiate_version().await.map_err(|e| {
            let message = format!("{e:?}");
            match &tls_files {
                Some([_, _, ca]) if message.contains("UnknownIssuer") || message.contains("BadSignature") => {
                    Error::Tls {
                        endpoint: endpoint.clone(),
                        file: ca.display().to_string(),
                        problem: "did not sign the engine's certificate (unknown issuer): it is not this engine's CA"
                            .into(),
                    }
                }
                Some([key, ..]) if message.contains("CertificateRequired") || message.contains("BadCertificate") => {
                    Error::Tls {
                        endpoint: endpoint.clone(),
                        file: key.with_file_name("cert.pem").display().to_string(),
                        problem: "the engine refused this client certificate (not signed by the CA it trusts)".into(),
                    }
                }
                _ => connect_err(e),
            }
        })?;
        let api_version = docker.client_version().to_string();
        let endpoint_for_raw = endpoint.clone();
        Ok(DockerRuntime {
            docker,
            endpoint,
            api_version,
            secrets: SecretPolicy::default(),
            plain_tcp_remote,
            cpu_samples: Default::default(),
            raw: raw::RawClient::new(&endpoint_for_raw, connector),
        })
    }

    /// `METHOD path` on the engine with an optional JSON body, through [`raw::RawClient`]: the body of a
    /// successful answer; an error status becomes the domain error for `operation` on `subject`.
    ///
    /// Used where bollard's typed models would drop what agentctl must carry: the whole inspect document
    /// and the create and connect requests built from it.
    async fn raw_request(
        &self,
        operation: &'static str,
        subject: &str,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Vec<u8>, RuntimeError> {
        let (status, answer) =
            self.raw
                .exchange(method, path, body)
                .await
                .map_err(|message| RuntimeError::Unavailable {
                    endpoint: self.endpoint.clone(),
                    message,
                })?;
        if status >= 400 {
            let message = serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&answer).trim().to_owned());
            return Err(self.status_error(operation, subject, status, message));
        }
        Ok(answer)
    }

    /// `POST path` with a JSON body; the answer's JSON (`null` when it has none).
    async fn raw_post(
        &self,
        operation: &'static str,
        subject: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, RuntimeError> {
        let answer = self.raw_request(operation, subject, "POST", path, Some(body)).await?;
        Ok(serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null))
    }

    /// Uses `policy` to decide which env variables of inspected containers are secret.
    pub fn with_secret_policy(mut self, policy: SecretPolicy) -> DockerRuntime {
        self.secrets = policy;
        self
    }

    /// The API version negotiated with the engine.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// Whether this is plain (unencrypted) TCP to a non-loopback address, which callers should warn about.
    pub fn is_plain_tcp_remote(&self) -> bool {
        self.plain_tcp_remote
    }

    /// The domain error for an engine answer with HTTP `status`.
    fn status_error(&self, operation: &'static str, subject: &str, status: u16, message: String) -> RuntimeError {
        match (status, operation) {
            (404, "inspect-image" | "pull" | "remove-image" | "tag" | "push") => RuntimeError::ImageNotFound {
                image: subject.to_owned(),
                message,
            },
            (404, "create") if message.contains("image") => RuntimeError::ImageNotFound {
                image: subject.to_owned(),
                message,
            },
            (404, _) if message.contains("network") => RuntimeError::InvalidSpec {
                container: subject.to_owned(),
                message,
            },
            (404, _) => RuntimeError::ContainerNotFound {
                container: subject.to_owned(),
                endpoint: self.endpoint.clone(),
            },
            (409, _) => RuntimeError::Conflict {
                container: subject.to_owned(),
                message,
            },
            (400, "create" | "network-connect") => RuntimeError::InvalidSpec {
                container: subject.to_owned(),
                message,
            },
            _ => RuntimeError::Engine {
                operation,
                subject: subject.to_owned(),
                status: Some(status),
                message,
            },
        }
    }

    pub(crate) fn err(&self, operation: &'static str, subject: &str, e: bollard::errors::Error) -> RuntimeError {
        use bollard::errors::Error as E;
        match e {
            E::DockerResponseServerError { status_code, message } => {
                self.status_error(operation, subject, status_code, message)
            }
            E::HyperResponseError { .. } | E::IOError { .. } | E::RequestTimeoutError => RuntimeError::Unavailable {
                endpoint: self.endpoint.clone(),
                message: e.to_string(),
            },
            other => RuntimeError::Engine {
                operation,
                subject: subject.to_owned(),
                status: None,
                message: other.to_string(),
            },
        }
    }

    /// Connects a container to `network` with the endpoint `settings` as the engine takes them.
    async fn connect_endpoint(
        &self,
        container: &str,
        network: &str,
        settings: &serde_json::Value,
    ) -> Result<(), RuntimeError> {
        let body = serde_json::json!({ "Container": container, "EndpointConfig": settings });
        self.raw_post(
            "network-connect",
            container,
            &format!("/networks/{network}/connect"),
            &body,
        )
        .await
        .map(drop)
    }

    /// A container whose network was removed and created again under the same name still points at the
    /// old network's id and cannot start. Re-join every such network by name with the container's own
    /// aliases and addresses. Returns whether anything was re-joined.
    async fn rejoin_recreated_networks(&self, container: &str) -> Result<bool, RuntimeError> {
        let raw = self
            .docker
            .inspect_container(container, None::<qp::InspectContainerOptions>)
            .await
            .map_err(|e| self.err("inspect", container, e))?;
        let recorded = raw
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.clone())
            .unwrap_or_default();
        let spec = self.inspect_container(container).await?.spec;
        let settings = spec.engine.as_ref().map(|e| e.endpoints()).unwrap_or_default();
        let mut rejoined = false;
        for (name, ep) in recorded {
            let Ok(now) = self
                .docker
                .inspect_network(&name, None::<qp::InspectNetworkOptions>)
                .await
            else {
                continue;
            };
            if now.id.is_none() || now.id == ep.network_id {
                continue;
            }
            let Some(endpoint) = settings.get(&name).cloned().or_else(|| {
                let net = spec.networks.iter().find(|n| n.name == name)?;
                serde_json::to_value(convert::endpoint_settings(net)).ok()
            }) else {
                continue;
            };
            tracing::warn!(container, network = %name, "the network was created again; re-joining it by name");
            let req = bollard::models::NetworkDisconnectRequest {
                container: container.to_owned(),
                force: Some(true),
            };
            self.docker
                .disconnect_network(&name, req)
                .await
                .map_err(|e| self.err("network-disconnect", container, e))?;
            self.connect_endpoint(container, &name, &endpoint).await?;
            rejoined = true;
        }
        Ok(rejoined)
    }

    /// The bollard client, for the crate's own helpers.
    pub(crate) fn client(&self) -> &Docker {
        &self.docker
    }
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn engine_info(&self) -> Result<EngineInfo, RuntimeError> {
        let v = self
            .docker
            .version()
            .await
            .map_err(|e| self.err("version", &self.endpoint, e))?;
        Ok(EngineInfo {
            endpoint: self.endpoint.clone(),
            version: v.version.unwrap_or_default(),
            api_version: self.api_version.clone(),
            os: v.os.unwrap_or_default(),
            arch: v.arch.unwrap_or_default(),
        })
    }

    async fn inspect_container(&self, container: &str) -> Result<ContainerInfo, RuntimeError> {
        // One read of the whole document: the typed view and the carried configuration come from the same
        // answer (bollard's typed model would drop the fields it does not know).
        let body = self
            .raw_request(
                "inspect",
                container,
                "GET",
                &format!("/containers/{container}/json"),
                None,
            )
            .await?;
        let document: serde_json::Value = serde_json::from_slice(&body).map_err(|e| RuntimeError::Engine {
            operation: "inspect",
            subject: container.to_owned(),
            status: None,
            message: format!("the engine's answer is not the JSON of a container: {e}"),
        })?;
        let raw: bollard::models::ContainerInspectResponse =
            serde_json::from_value(document.clone()).map_err(|e| RuntimeError::Engine {
                operation: "inspect",
                subject: container.to_owned(),
                status: None,
                message: format!("the engine's answer does not read as a container: {e}"),
            })?;
        let image_id = raw.image.clone().unwrap_or_default();
        // The image's defaults tell what the user set from what the image set. If the image is gone, treat
        // everything as user-set (nothing is lost; some image defaults get frozen).
        let defaults = match self.inspect_image(&image_id).await {
            Ok(img) => img.defaults,
            Err(RuntimeError::ImageNotFound { .. }) => Default::default(),
            Err(e) => return Err(e),
        };
        let mut info = convert::container_info(raw, &defaults, &self.secrets)?;
        // The MAC address the user chose (`--mac-address`) is container-level on API < 1.44.
        let mac = document["Config"]["MacAddress"].as_str().filter(|m| !m.is_empty());
        if let (Some(mac), Some(i)) = (mac, convert::primary_network(&info.spec)) {
            info.spec.networks[i].mac_address = Some(mac.to_owned());
        }
        // Volumes reached through `--volumes-from` belong to the containers named there.
        let mut borrowed = Vec::new();
        for from in document["HostConfig"]["VolumesFrom"].as_array().into_iter().flatten() {
            let Some(source) = from.as_str().map(|f| f.split(':').next().unwrap_or(f)) else {
                continue;
            };
            // A source that is gone lends nothing any more.
            let Ok(body) = self
                .raw_request("inspect", source, "GET", &format!("/containers/{source}/json"), None)
                .await
            else {
                continue;
            };
            let other: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            borrowed.extend(
                other["Mounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["Name"].as_str().map(str::to_owned)),
            );
        }
        info.spec.engine = Some(carried::normalize(&document, &defaults, &borrowed));
        Ok(info)
    }

    async fn inspect_image(&self, image: &str) -> Result<ImageInfo, RuntimeError> {
        let raw = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|e| self.err("inspect-image", image, e))?;
        Ok(convert::image_info(raw))
    }

    async fn pull_image(&self, image: &ImageRef, progress: ProgressFn<'_>) -> Result<ImageInfo, RuntimeError> {
        let (from_image, tag) = match (image.digest(), image.effective_tag()) {
            (Some(d), _) => (image.name(), d.to_string()),
            (None, Some(t)) => (image.name(), t.to_owned()),
            (None, None) => (image.name(), "latest".to_owned()),
        };
        let opts = qp::CreateImageOptionsBuilder::new()
            .from_image(&from_image)
            .tag(&tag)
            .build();
        let mut stream = self.docker.create_image(Some(opts), None, None);
        let subject = image.to_string();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail {
                        let message = detail.message.unwrap_or_default();
                        return Err(pull_error(&subject, message));
                    }
                    let (current, total) = info
                        .progress_detail
                        .map(|p| (p.current.map(|c| c.max(0) as u64), p.total.map(|t| t.max(0) as u64)))
                        .unwrap_or((None, None));
                    progress(PullProgress {
                        layer: info.id.unwrap_or_default(),
                        status: info.status.unwrap_or_default(),
                        current,
                        total,
                    });
                }
                Err(bollard::errors::Error::DockerStreamError { error }) => return Err(pull_error(&subject, error)),
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                    return Err(pull_error(&subject, message))
                }
                Err(e) => return Err(self.err("pull", &subject, e)),
            }
        }
        self.inspect_image(&image.pull_ref()).await
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let name = spec.name.as_str();
        let request = match &spec.engine {
            Some(doc) => carried::create_request(spec, doc)?,
            None => convert::create_request(spec)?,
        };
        let created = self
            .raw_post(
                "create",
                name,
                &format!("/containers/create?name={name}"),
                &request.body,
            )
            .await
            .map_err(|e| match e {
                RuntimeError::ImageNotFound { message, .. } => RuntimeError::ImageNotFound {
                    image: spec.image.to_string(),
                    message,
                },
                other => other,
            })?;
        // API 1.41 attaches one network at create; the others are connected before the first start.
        for (network, settings) in &request.connect_after {
            if let Err(e) = self.connect_endpoint(name, network, settings).await {
                // Leave nothing half-made behind.
                let _ = self
                    .docker
                    .remove_container(name, Some(qp::RemoveContainerOptionsBuilder::new().force(true).build()))
                    .await;
                return Err(e);
            }
        }
        Ok(created["Id"].as_str().unwrap_or_default().to_owned())
    }

    async fn start_container(&self, container: &str) -> Result<(), RuntimeError> {
        match self
            .docker
            .start_container(container, None::<qp::StartContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            // 304: already running.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => {
                let err = self.err("start", container, e);
                let msg = err.to_string();
                if msg.contains("network")
                    && msg.contains("not found")
                    && self.rejoin_recreated_networks(container).await?
                {
                    return self
                        .docker
                        .start_container(container, None::<qp::StartContainerOptions>)
                        .await
                        .map_err(|e| self.err("start", container, e));
                }
                Err(err)
            }
        }
    }

    async fn stop_container(&self, container: &str, timeout: Option<Duration>) -> Result<(), RuntimeError> {
        let mut b = qp::StopContainerOptionsBuilder::new();
        if let Some(t) = timeout {
            b = b.t(t.as_secs().min(i32::MAX as u64) as i32);
        }
        match self.docker.stop_container(container, Some(b.build())).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(self.err("stop", container, e)),
        }
    }

    async fn rename_container(&self, container: &str, new_name: &str) -> Result<(), RuntimeError> {
        let opts = qp::RenameContainerOptionsBuilder::new().name(new_name).build();
        self.docker
            .rename_container(container, opts)
            .await
            .map_err(|e| match self.err("rename", container, e) {
                RuntimeError::Conflict { message, .. } => RuntimeError::Conflict {
                    container: new_name.to_owned(),
                    message,
                },
                other => other,
            })
    }

    async fn set_restart_policy(&self, container: &str, policy: RestartPolicy) -> Result<(), RuntimeError> {
        let body = bollard::models::ContainerUpdateBody {
            restart_policy: Some(convert::restart_policy(policy)),
            ..Default::default()
        };
        self.docker
            .update_container(container, body)
            .await
            .map_err(|e| self.err("update-restart", container, e))
    }

    async fn remove_container(&self, container: &str) -> Result<(), RuntimeError> {
        let opts = qp::RemoveContainerOptionsBuilder::new().v(false).force(false).build();
        self.docker
            .remove_container(container, Some(opts))
            .await
            .map_err(|e| self.err("remove", container, e))
    }

    async fn logs(
        &self,
        container: &str,
        since: Option<OffsetDateTime>,
        tail: Option<usize>,
    ) -> Result<Vec<LogLine>, RuntimeError> {
        let mut b = qp::LogsOptionsBuilder::new().stdout(true).stderr(true);
        if let Some(s) = since {
            b = b.since(s.unix_timestamp().clamp(0, i32::MAX as i64) as i32);
        }
        let tail_text = tail.map(|t| t.to_string());
        if let Some(t) = &tail_text {
            b = b.tail(t);
        }
        let stream = self.docker.logs(container, Some(b.build()));
        collect_lines(stream).await.map_err(|e| self.err("logs", container, e))
    }

    async fn list_containers(&self, labels: &[String]) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        if !labels.is_empty() {
            filters.insert("label".into(), labels.to_vec());
        }
        let opts = qp::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| self.err("list", &self.endpoint, e))?;
        Ok(list
            .into_iter()
            .map(|c| ContainerSummary {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                status: c.state.map(convert::summary_status).unwrap_or(ContainerStatus::Created),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
            })
            .collect())
    }

    async fn tag_image(&self, image: &str, reference: &ImageRef) -> Result<(), RuntimeError> {
        self.tag_as(image, &reference.pull_ref()).await
    }

    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError> {
        self.docker
            .remove_image(image, None::<qp::RemoveImageOptions>, None)
            .await
            .map(|_| ())
            .map_err(|e| self.err("remove-image", image, e))
    }

    async fn create_isolated_network(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, RuntimeError> {
        let labels: HashMap<String, String> = labels.clone().into_iter().collect();
        self.create_network(name, None, &labels).await?;
        match self.network_gateway(name).await {
            Ok(Some(g)) => Ok(g),
            other => {
                let _ = self.client().remove_network(name).await;
                Err(RuntimeError::Engine {
                    operation: "network-create",
                    subject: name.to_owned(),
                    status: None,
                    message: match other {
                        Err(e) => e.to_string(),
                        _ => "the engine gave the network no gateway address".into(),
                    },
                })
            }
        }
    }

    async fn list_networks(
        &self,
        labels: &[String],
    ) -> Result<Vec<(String, std::collections::BTreeMap<String, String>)>, RuntimeError> {
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        if !labels.is_empty() {
            filters.insert("label".into(), labels.to_vec());
        }
        let opts = qp::ListNetworksOptionsBuilder::new().filters(&filters).build();
        let list = self
            .client()
            .list_networks(Some(opts))
            .await
            .map_err(|e| self.err("network-list", &self.endpoint, e))?;
        Ok(list
            .into_iter()
            .map(|n| {
                (
                    n.name.unwrap_or_default(),
                    n.labels.unwrap_or_default().into_iter().collect(),
                )
            })
            .collect())
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.client()
            .remove_network(name)
            .await
            .map_err(|e| self.err("network-remove", name, e))
    }

    async fn service(&self, name: &str) -> Result<agent_core::ServiceInfo, RuntimeError> {
        self.service_info(name).await
    }

    async fn change_service(
        &self,
        name: &str,
        change: agent_core::ServiceChange<'_>,
    ) -> Result<agent_core::ServiceInfo, RuntimeError> {
        self.change(name, change).await
    }

    async fn service_tasks(&self, name: &str) -> Result<Vec<agent_core::TaskInfo>, RuntimeError> {
        self.tasks(name).await
    }

    async fn task_logs(&self, task: &str, since: Option<OffsetDateTime>) -> Result<Vec<LogLine>, RuntimeError> {
        self.logs_of_task(task, since).await
    }

    async fn exec(
        &self,
        container: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<agent_core::ExecOutput, RuntimeError> {
        exec::run(self, container, cmd, timeout).await
    }

    async fn stats(&self, container: &str) -> Result<agent_core::ResourceUsage, RuntimeError> {
        // A one-shot sample answers at once (a two-sample read takes about two seconds); CPU is then computed
        // against this runtime's previous sample of the same container.
        let opts = qp::StatsOptionsBuilder::new().stream(false).one_shot(true).build();
        let mut stream = self.docker.stats(container, Some(opts));
        let Some(sample) = stream.next().await else {
            return Err(RuntimeError::Engine {
                operation: "stats",
                subject: container.to_owned(),
                status: None,
                message: "the engine sent no sample".into(),
            });
        };
        let s = sample.map_err(|e| self.err("stats", container, e))?;
        let mut previous = self.cpu_samples.lock().unwrap_or_else(|p| p.into_inner());
        let key = s.id.clone().unwrap_or_else(|| container.to_owned());
        let (usage, now) = convert::usage(&s, previous.get(&key).copied());
        previous.insert(key, now);
        Ok(usage)
    }

    fn supports_records(&self) -> bool {
        true
    }

    async fn create_record(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, RuntimeError> {
        self.create_record_container(name, labels).await
    }

    async fn record(&self, name: &str) -> Result<Option<agent_core::RecordInfo>, RuntimeError> {
        self.inspect_record(name).await
    }

    async fn volume_exists(&self, name: &str) -> Result<Option<bool>, RuntimeError> {
        match self.docker.inspect_volume(name).await {
            Ok(_) => Ok(Some(true)),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(Some(false)),
            Err(e) => Err(self.err("volume-inspect", name, e)),
        }
    }

    async fn read_record(&self, record: &str, file: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        self.read_record_file(record, file).await
    }

    async fn write_record(&self, record: &str, file: &str, data: &[u8]) -> Result<(), RuntimeError> {
        self.write_record_file(record, file, data).await
    }

    async fn remove_record(&self, id: &str) -> Result<(), RuntimeError> {
        self.remove_record_container(id).await
    }

    async fn export_path(&self, container: &str, path: &str) -> Result<Vec<u8>, RuntimeError> {
        let opts = qp::DownloadFromContainerOptionsBuilder::new().path(path).build();
        let mut stream = self.docker.download_from_container(container, Some(opts));
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.map_err(|e| self.err("export", container, e))?);
        }
        Ok(out)
    }
}

fn pull_error(image: &str, message: String) -> RuntimeError {
    let lower = message.to_ascii_lowercase();
    if lower.contains("manifest unknown") || lower.contains("not found") || lower.contains("does not exist") {
        RuntimeError::ImageNotFound {
            image: image.to_owned(),
            message,
        }
    } else {
        RuntimeError::PullFailed {
            image: image.to_owned(),
            message,
        }
    }
}

/// The lines of a log stream (stdout and stderr kept apart until each line ends).
pub(crate) async fn collect_lines(
    stream: impl futures_util::Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>>,
) -> Result<Vec<LogLine>, bollard::errors::Error> {
    futures_util::pin_mut!(stream);
    let mut lines = Vec::new();
    let mut partial: [String; 2] = Default::default();
    while let Some(item) = stream.next().await {
        let (idx, stream_kind, bytes) = match item? {
            bollard::container::LogOutput::StdErr { message } => (1, LogStream::Stderr, message),
            bollard::container::LogOutput::StdOut { message } | bollard::container::LogOutput::Console { message } => {
                (0, LogStream::Stdout, message)
            }
            bollard::container::LogOutput::StdIn { .. } => continue,
        };
        partial[idx].push_str(&String::from_utf8_lossy(&bytes));
        while let Some(nl) = partial[idx].find('\n') {
            let line: String = partial[idx].drain(..=nl).collect();
            lines.push(LogLine {
                stream: stream_kind,
                text: line.trim_end_matches(['\n', '\r']).to_owned(),
            });
        }
    }
    for (idx, rest) in partial.into_iter().enumerate() {
        if !rest.is_empty() {
            lines.push(LogLine {
                stream: if idx == 0 { LogStream::Stdout } else { LogStream::Stderr },
                text: rest,
            });
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_endpoint("tcp://127.0.0.1:2375"));
        assert!(is_loopback_endpoint("tcp://localhost:2375"));
        assert!(!is_loopback_endpoint("tcp://10.0.0.5:2375"));
    }

    #[test]
    fn pull_errors_are_classified() {
        assert!(matches!(
            pull_error("a", "manifest for a:9 not found: manifest unknown".into()),
            RuntimeError::ImageNotFound { .. }
        ));
        assert!(matches!(
            pull_error("a", "connection reset".into()),
            RuntimeError::PullFailed { .. }
        ));
    }
}
