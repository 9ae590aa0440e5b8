//! Records on the engine: containers that never run, made from an empty image, whose unique names make
//! creation an atomic claim and whose files (written and read through the archive API) hold small documents.
//! agentctl's engine locks and the copy of each agent's history that lives with the fleet are records.

use std::collections::BTreeMap;
use std::io::Read;

use agent_core::{RecordInfo, RuntimeError, RECORD_LABEL};
use bollard::query_parameters as qp;
use futures_util::StreamExt;

use crate::DockerRuntime;

/// The image records are made from: empty (no layer content), imported on first use.
pub(crate) const RECORD_IMAGE: &str = "agentctl-record:1";

impl DockerRuntime {
    /// Imports the empty record image (an empty tar through `POST /images/create?fromSrc=-`).
    async fn import_record_image(&self) -> Result<(), RuntimeError> {
        let empty = tar::Builder::new(Vec::new())
            .into_inner()
            .map_err(|e| RuntimeError::Engine {
                operation: "record-image",
                subject: RECORD_IMAGE.into(),
                status: None,
                message: e.to_string(),
            })?;
        let (repo, tag) = RECORD_IMAGE.split_once(':').unwrap_or((RECORD_IMAGE, "1"));
        let opts = qp::CreateImageOptionsBuilder::new()
            .from_src("-")
            .repo(repo)
            .tag(tag)
            .changes(vec![
                format!("LABEL {RECORD_LABEL}=image"),
                "LABEL org.opencontainers.image.title=\"agentctl record (never runs)\"".into(),
            ])
            .build();
        let mut stream = self
            .docker
            .create_image(Some(opts), Some(bollard::body_full(empty.into())), None);
        while let Some(item) = stream.next().await {
            item.map_err(|e| self.err("record-image", RECORD_IMAGE, e))?;
        }
        Ok(())
    }

    pub(crate) async fn create_record_container(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<String, RuntimeError> {
        let mut labels = labels.clone();
        labels.entry(RECORD_LABEL.to_owned()).or_insert_with(|| "record".into());
        let body = serde_json::json!({
            "Image": RECORD_IMAGE,
            // Never started; the engine wants a command all the same.
            "Cmd": ["agentctl-record"],
            "Labels": labels,
            "HostConfig": { "NetworkMode": "none" },
        });
        let path = format!("/containers/create?name={name}");
        let created = match self.raw_post("create", name, &path, &body).await {
            Err(RuntimeError::ImageNotFound { .. }) => {
                self.import_record_image().await?;
                self.raw_post("create", name, &path, &body).await?
            }
            other => other?,
        };
        Ok(created["Id"].as_str().unwrap_or_default().to_owned())
    }

    pub(crate) async fn inspect_record(&self, name: &str) -> Result<Option<RecordInfo>, RuntimeError> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => Ok(Some(RecordInfo {
                id: c.id.unwrap_or_default(),
                name: c.name.unwrap_or_default().trim_start_matches('/').to_owned(),
                labels: c
                    .config
                    .and_then(|c| c.labels)
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            })),
            Err(e) => match self.err("inspect", name, e) {
                RuntimeError::ContainerNotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    pub(crate) async fn read_record_file(&self, record: &str, file: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        let tar = match agent_core::ContainerRuntime::export_path(self, record, &format!("/{file}")).await {
            Ok(t) => t,
            Err(RuntimeError::ContainerNotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = |e: std::io::Error| RuntimeError::Engine {
            operation: "record-read",
            subject: format!("{record}/{file}"),
            status: None,
            message: e.to_string(),
        };
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entries = archive.entries().map_err(bad)?;
        match entries.next() {
            Some(entry) => {
                let mut data = Vec::new();
                entry.map_err(bad)?.read_to_end(&mut data).map_err(bad)?;
                Ok(Some(data))
            }
            None => Ok(None),
        }
    }

    pub(crate) async fn write_record_file(&self, record: &str, file: &str, data: &[u8]) -> Result<(), RuntimeError> {
        if file.is_empty() || file.contains('/') {
            return Err(RuntimeError::Engine {
                operation: "record-write",
                subject: format!("{record}/{file}"),
                status: None,
                message: "a record's file name is one plain name".into(),
            });
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64);
        let mut builder = tar::Builder::new(Vec::new());
        let archive = builder
            .append_data(&mut header, file, data)
            .and_then(|()| builder.into_inner())
            .map_err(|e| RuntimeError::Engine {
                operation: "record-write",
                subject: format!("{record}/{file}"),
                status: None,
                message: e.to_string(),
            })?;
        let opts = qp::UploadToContainerOptionsBuilder::new().path("/").build();
        self.docker
            .upload_to_container(record, Some(opts), bollard::body_full(archive.into()))
            .await
            .map_err(|e| self.err("record-write", record, e))
    }

    pub(crate) async fn remove_record_container(&self, id: &str) -> Result<(), RuntimeError> {
        let opts = qp::RemoveContainerOptionsBuilder::new().v(false).force(false).build();
        self.docker
            .remove_container(id, Some(opts))
            .await
            .map_err(|e| self.err("remove", id, e))
    }
}
