//! Engine operations beyond the runtime trait that tools around agentctl need: building an image from an
//! in-memory context (no registry, no files on disk), tagging and pushing, networks and volumes for tests,
//! and cleaning up by label.

use std::collections::HashMap;

use agent_core::{ContainerRuntime, PullProgress, RuntimeError};
use bollard::query_parameters as qp;
use futures_util::StreamExt;

use crate::DockerRuntime;

/// One file of a build context.
#[derive(Debug, Clone)]
pub struct BuildFile {
    /// Path inside the context (`agent`, `Dockerfile`).
    pub path: String,
    /// Content.
    pub content: Vec<u8>,
    /// Unix mode (`0o755` for executables).
    pub mode: u32,
}

/// An in-memory build context: a Dockerfile and the files it copies.
#[derive(Debug, Clone, Default)]
pub struct BuildContext {
    files: Vec<BuildFile>,
}

impl BuildContext {
    /// A context holding `dockerfile` as `Dockerfile`.
    pub fn new(dockerfile: &str) -> BuildContext {
        BuildContext {
            files: vec![BuildFile {
                path: "Dockerfile".into(),
                content: dockerfile.as_bytes().to_vec(),
                mode: 0o644,
            }],
        }
    }

    /// Adds a file.
    pub fn file(mut self, path: &str, content: Vec<u8>, mode: u32) -> BuildContext {
        self.files.push(BuildFile {
            path: path.to_owned(),
            content,
            mode,
        });
        self
    }

    /// The context as a tar archive.
    pub fn to_tar(&self) -> std::io::Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for f in &self.files {
            let mut header = tar::Header::new_gnu();
            header.set_size(f.content.len() as u64);
            header.set_mode(f.mode);
            header.set_mtime(0);
            header.set_cksum();
            builder.append_data(&mut header, &f.path, f.content.as_slice())?;
        }
        builder.into_inner()
    }
}

/// A build context as sent to the engine: an archive in memory, or a file streamed from disk.
#[derive(Debug)]
pub enum ContextBody {
    /// A small archive in memory.
    Bytes(Vec<u8>),
    /// An archive file, read and sent in chunks.
    File(std::path::PathBuf),
}

impl DockerRuntime {
    /// Builds `context` into an image tagged `tag` with `labels`, without pulling anything. Returns the image id.
    pub async fn build_image(
        &self,
        context: &BuildContext,
        tag: &str,
        labels: &HashMap<String, String>,
    ) -> Result<String, RuntimeError> {
        let tar = context.to_tar().map_err(|e| RuntimeError::Engine {
            operation: "build",
            subject: tag.to_owned(),
            status: None,
            message: e.to_string(),
        })?;
        self.build_tar(
            ContextBody::Bytes(tar),
            tag,
            "Dockerfile",
            labels,
            &HashMap::new(),
            &|_| {},
        )
        .await
    }

    /// Builds a context archive (`dockerfile` is its path inside the archive) into an image tagged `tag`, with
    /// `labels` and build arguments `args`, passing each line of the builder's output to `output`. Base images
    /// are pulled when missing. On failure the error carries the builder's output.
    pub async fn build_tar(
        &self,
        tar: ContextBody,
        tag: &str,
        dockerfile: &str,
        labels: &HashMap<String, String>,
        args: &HashMap<String, String>,
        output: &(dyn Fn(String) + Send + Sync),
    ) -> Result<String, RuntimeError> {
        let opts = qp::BuildImageOptionsBuilder::new()
            .t(tag)
            .dockerfile(dockerfile)
            .rm(true)
            .forcerm(true)
            .labels(labels)
            .buildargs(args)
            .build();
        let body = match tar {
            ContextBody::Bytes(bytes) => bollard::body_full(bytes.into()),
            ContextBody::File(path) => {
                let file = tokio::fs::File::open(&path).await.map_err(|e| RuntimeError::Engine {
                    operation: "build",
                    subject: tag.to_owned(),
                    status: None,
                    message: format!("reading the build context {}: {e}", path.display()),
                })?;
                // 64 KiB at a time from disk to the engine.
                let chunks = futures_util::stream::unfold(file, |mut file| async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = vec![0u8; 64 * 1024];
                    match file.read(&mut buf).await {
                        Ok(0) => None,
                        Ok(n) => {
                            buf.truncate(n);
                            Some((Ok(bytes::Bytes::from(buf)), file))
                        }
                        Err(e) => Some((Err(e), file)),
                    }
                });
                bollard::body_try_stream(chunks)
            }
        };
        let mut stream = self.client().build_image(opts, None, Some(body));
        let mut log = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(e) = info.error_detail.and_then(|d| d.message) {
                        return Err(RuntimeError::Engine {
                            operation: "build",
                            subject: tag.to_owned(),
                            status: None,
                            message: format!("{e}\n{log}"),
                        });
                    }
                    if let Some(s) = info.stream {
                        for line in s.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                            output(line.to_owned());
                        }
                        log.push_str(&s);
                    }
                }
                Err(e) => return Err(self.err("build", tag, e)),
            }
        }
        Ok(self.inspect_image(tag).await?.id)
    }

    /// Tags `image` (a reference or id) as `target` (`repo:tag`).
    pub async fn tag_as(&self, image: &str, target: &str) -> Result<(), RuntimeError> {
        let (repo, tag) = match target.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (target, "latest"),
        };
        let opts = qp::TagImageOptionsBuilder::new().repo(repo).tag(tag).build();
        self.client()
            .tag_image(image, Some(opts))
            .await
            .map_err(|e| self.err("tag", image, e))
    }

    /// Pushes `image` (`registry/repo:tag`) to its registry; returns the digest the registry reported.
    pub async fn push_image(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        self.push_image_with(image, &|_| {}).await
    }

    /// [`push_image`](Self::push_image) with per-layer progress.
    pub async fn push_image_with(
        &self,
        image: &str,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<Option<String>, RuntimeError> {
        let (repo, tag) = match image.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (image, "latest"),
        };
        // Through the raw client: bollard's typed push answer drops the layer id each line carries.
        let mut digest = None;
        let mut failed = None;
        let mut on_line = |line: &str| {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                return;
            };
            if let Some(e) = v["errorDetail"]["message"].as_str().or(v["error"].as_str()) {
                failed = Some(e.to_owned());
                return;
            }
            if let Some(d) = v["aux"]["Digest"].as_str() {
                digest = Some(d.to_owned());
            }
            let count = |k: &str| v["progressDetail"][k].as_i64().map(|n| n.max(0) as u64);
            progress(PullProgress {
                layer: v["id"].as_str().unwrap_or_default().to_owned(),
                status: v["status"].as_str().unwrap_or_default().to_owned(),
                current: count("current"),
                total: count("total"),
            });
        };
        // `e30=` is `{}`: no credentials (the engine uses none for a registry that asks for none).
        let path = format!("/images/{repo}/push?tag={tag}");
        self.raw
            .post_lines(&path, &[("X-Registry-Auth", "e30=")], &mut on_line)
            .await
            .map_err(|message| RuntimeError::PullFailed {
                image: image.to_owned(),
                message: format!("push: {message}"),
            })?;
        if let Some(message) = failed {
            return Err(RuntimeError::PullFailed {
                image: image.to_owned(),
                message: format!("push: {message}"),
            });
        }
        Ok(digest)
    }

    /// Creates a bridge network with `subnet` (for static addresses) and `labels`; returns its id.
    pub async fn create_network(
        &self,
        name: &str,
        subnet: Option<&str>,
        labels: &HashMap<String, String>,
    ) -> Result<String, RuntimeError> {
        let req = bollard::models::NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            labels: Some(labels.clone()),
            ipam: subnet.map(|s| bollard::models::Ipam {
                config: Some(vec![bollard::models::IpamConfig {
                    subnet: Some(s.to_owned()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = self
            .client()
            .create_network(req)
            .await
            .map_err(|e| self.err("network-create", name, e))?;
        Ok(r.id)
    }

    /// Creates a named volume with `labels`.
    pub async fn create_volume(&self, name: &str, labels: &HashMap<String, String>) -> Result<(), RuntimeError> {
        let req = bollard::models::VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        self.client()
            .create_volume(req)
            .await
            .map(|_| ())
            .map_err(|e| self.err("volume-create", name, e))
    }

    /// Removes every container, network and volume labelled `label` (`key=value`), and every image with that
    /// label; errors on single items are ignored so a cleanup after a failed test does as much as it can.
    /// Returns how many objects it removed.
    pub async fn remove_labelled(&self, label: &str) -> usize {
        let mut removed = 0;
        let filters: HashMap<String, Vec<String>> = HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
        // The anonymous volumes an update re-attached by name (agentctl keeps an agent's data): the engine no
        // longer removes them with the container, so they are collected first and removed after.
        let mut anonymous = Vec::new();
        if let Ok(list) = self.list_containers(&[label.to_owned()]).await {
            for c in list {
                if let Ok(info) = self.client().inspect_container(&c.id, None).await {
                    anonymous.extend(
                        info.mounts
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|m| m.name.filter(|n| crate::carried::is_generated_volume(n))),
                    );
                }
                let opts = qp::RemoveContainerOptionsBuilder::new().force(true).v(true).build();
                if self.client().remove_container(&c.id, Some(opts)).await.is_ok() {
                    removed += 1;
                }
            }
        }
        for name in anonymous {
            // Still in use by a container of someone else's: left alone.
            if self
                .client()
                .remove_volume(&name, None::<qp::RemoveVolumeOptions>)
                .await
                .is_ok()
            {
                removed += 1;
            }
        }
        let vopts = qp::ListVolumesOptionsBuilder::new().filters(&filters).build();
        if let Ok(vols) = self.client().list_volumes(Some(vopts)).await {
            for v in vols.volumes.unwrap_or_default() {
                if self
                    .client()
                    .remove_volume(&v.name, None::<qp::RemoveVolumeOptions>)
                    .await
                    .is_ok()
                {
                    removed += 1;
                }
            }
        }
        let nopts = qp::ListNetworksOptionsBuilder::new().filters(&filters).build();
        if let Ok(nets) = self.client().list_networks(Some(nopts)).await {
            for n in nets {
                if let Some(id) = n.id {
                    if self.client().remove_network(&id).await.is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        let iopts = qp::ListImagesOptionsBuilder::new().filters(&filters).build();
        if let Ok(images) = self.client().list_images(Some(iopts)).await {
            for i in images {
                let opts = qp::RemoveImageOptionsBuilder::new().force(true).build();
                if self.client().remove_image(&i.id, Some(opts), None).await.is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Removes a volume (it must be unused).
    pub async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        self.client()
            .remove_volume(name, None::<qp::RemoveVolumeOptions>)
            .await
            .map_err(|e| self.err("volume-remove", name, e))
    }

    /// Extracts the tar archive `tar` into `path` inside the container (the engine's archive API); the
    /// counterpart of `export_path`, used to restore backups and to seed test data.
    pub async fn import_path(&self, container: &str, path: &str, tar: Vec<u8>) -> Result<(), RuntimeError> {
        let opts = qp::UploadToContainerOptionsBuilder::new().path(path).build();
        self.client()
            .upload_to_container(container, Some(opts), bollard::body_full(tar.into()))
            .await
            .map_err(|e| self.err("import", container, e))
    }

    /// The gateway address of a network (the host's address on it, which its containers can reach).
    pub async fn network_gateway(&self, network: &str) -> Result<Option<String>, RuntimeError> {
        let n = self
            .client()
            .inspect_network(network, None::<qp::InspectNetworkOptions>)
            .await
            .map_err(|e| self.err("network-inspect", network, e))?;
        Ok(n.ipam
            .and_then(|i| i.config)
            .and_then(|c| c.into_iter().find_map(|c| c.gateway))
            .map(|g| g.split('/').next().unwrap_or_default().to_owned()))
    }
}
