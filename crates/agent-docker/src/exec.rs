//! Running a command in a container through the engine's exec API (create, start attached, inspect).

use std::time::Duration;

use agent_core::RuntimeError;
use futures_util::StreamExt;

use crate::DockerRuntime;

/// Runs `cmd` in `container` as its user, at most `timeout`; the exit code and the first 4 KiB of output.
pub(crate) async fn run(
    rt: &DockerRuntime,
    container: &str,
    cmd: &[String],
    timeout: Duration,
) -> Result<agent_core::ExecOutput, RuntimeError> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    let run = async {
        let created = rt
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| rt.err("exec", container, e))?;
        let mut output = String::new();
        if let StartExecResults::Attached { output: mut stream, .. } = rt
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| rt.err("exec", container, e))?
        {
            while let Some(item) = stream.next().await {
                let item = item.map_err(|e| rt.err("exec", container, e))?;
                if output.len() < 4096 {
                    output.push_str(&String::from_utf8_lossy(&item.into_bytes()));
                }
            }
        }
        let inspected = rt
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| rt.err("exec", container, e))?;
        let mut end = output.len().min(4096);
        while !output.is_char_boundary(end) {
            end -= 1;
        }
        output.truncate(end);
        Ok(agent_core::ExecOutput {
            exit_code: inspected.exit_code.unwrap_or(-1),
            output,
        })
    };
    tokio::time::timeout(timeout, run).await.unwrap_or_else(|_| {
        Err(RuntimeError::Engine {
            operation: "exec",
            subject: container.to_owned(),
            status: None,
            message: format!(
                "the command did not end within {}",
                agent_core::format_duration(timeout)
            ),
        })
    })
}
