//! Traffic through a load balancer: the `traffic:` section of a rollout spec and a client of HAProxy's
//! runtime API (the admin socket), which sets server weights and adds, drains and removes servers without a
//! reload.
//!
//! The client is written here rather than taken from a crate: the runtime API is a line of text per
//! connection and a text answer, and no maintained crate covers the commands used (`add server`, `del
//! server`, `show servers state`, `show stat`).

use std::path::PathBuf;
use std::time::Duration;

use agent_core::duration_text;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where a rollout's traffic goes through, in a spec's `traffic:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSpec {
    /// An HAProxy backend whose servers are the targets.
    pub haproxy: HaproxySpec,
}

/// An HAProxy backend and how to reach its runtime API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HaproxySpec {
    /// The runtime API: a unix socket path (`stats socket PATH level admin`) or `HOST:PORT`.
    pub socket: String,
    /// The backend whose servers are the targets' containers.
    pub backend: String,
    /// The port the agents serve on, inside their containers.
    pub port: u16,
    /// The container network whose address the servers use (needed when a container is on several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// How long a server being removed may finish its requests before it is cut off.
    #[serde(with = "duration_text", default = "ten_seconds")]
    pub drain_timeout: Duration,
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

/// A server of a backend, as `show servers state` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// Its name.
    pub name: String,
    /// Its address.
    pub addr: String,
    /// Its port.
    pub port: u16,
    /// Its weight as set (0–256).
    pub weight: u16,
    /// The administrative state bits (0: ready; 1, 2, 4, 32: kinds of maintenance; 8: drain).
    pub admin: u32,
}

impl Server {
    /// `addr:port`.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.addr, self.port)
    }
}

/// What went wrong talking to HAProxy.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    /// The runtime API could not be reached.
    #[error("HAProxy's runtime API at {at} cannot be reached: {source}; check `traffic.haproxy.socket` (a `stats socket ... level admin` of the running HAProxy)")]
    Unreachable {
        /// The socket.
        at: String,
        /// Why.
        source: std::io::Error,
    },
    /// HAProxy refused a command.
    #[error("HAProxy refused `{command}`: {answer}")]
    Refused {
        /// The command.
        command: String,
        /// Its answer.
        answer: String,
    },
}

/// A client of one backend through HAProxy's runtime API.
#[derive(Debug, Clone)]
pub struct Haproxy {
    socket: String,
    backend: String,
}

impl Haproxy {
    /// A client of `backend` through the runtime API at `socket` (a path or `HOST:PORT`).
    pub fn new(socket: &str, backend: &str) -> Haproxy {
        Haproxy {
            socket: socket.to_owned(),
            backend: backend.to_owned(),
        }
    }

    /// The backend's name.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Sends one command and returns HAProxy's answer (it closes the connection after answering). A command
    /// holding `;` or a line break (which HAProxy would run as a second command) is refused unsent.
    pub async fn command(&self, command: &str) -> Result<String, HaproxyError> {
        if command.contains([';', '\n', '\r']) {
            return Err(HaproxyError::Refused {
                command: command.escape_debug().to_string(),
                answer: "not sent: it holds `;` or a line break, which the runtime API would run as another command"
                    .into(),
            });
        }
        let unreachable = |source| HaproxyError::Unreachable {
            at: self.socket.clone(),
            source,
        };
        let line = format!("{command}\n");
        let mut answer = Vec::new();
        let io = async {
            if self.socket.starts_with('/') || self.socket.starts_with('.') {
                let mut s = tokio::net::UnixStream::connect(PathBuf::from(&self.socket)).await?;
                s.write_all(line.as_bytes()).await?;
                s.read_to_end(&mut answer).await?;
            } else {
                let mut s = tokio::net::TcpStream::connect(&self.socket).await?;
                s.write_all(line.as_bytes()).await?;
                s.read_to_end(&mut answer).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        tokio::time::timeout(Duration::from_secs(10), io)
            .await
            .map_err(|_| unreachable(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s")))?
            .map_err(unreachable)?;
        Ok(String::from_utf8_lossy(&answer).trim().to_owned())
    }

    /// Sends a command whose success is an empty answer or one of `ok`.
    async fn expect(&self, command: &str, ok: &[&str]) -> Result<(), HaproxyError> {
        let answer = self.command(command).await?;
        if answer.is_empty() || ok.iter().any(|o| answer.starts_with(o)) {
            Ok(())
        } else {
            Err(HaproxyError::Refused {
                command: command.to_owned(),
                answer,
            })
        }
    }

    /// The backend's servers.
    pub async fn servers(&self) -> Result<Vec<Server>, HaproxyError> {
        let command = format!("show servers state {}", self.backend);
        let answer = self.command(&command).await?;
        parse_servers_state(&answer).ok_or(HaproxyError::Refused { command, answer })
    }

    /// Adds a server at `addr:port` with `weight`, ready for traffic.
    pub async fn add(&self, name: &str, addr: &str, port: u16, weight: u16) -> Result<(), HaproxyError> {
        let b = &self.backend;
        self.expect(
            &format!("add server {b}/{name} {addr}:{port} weight {weight}"),
            &["New server registered"],
        )
        .await?;
        // A new server starts in maintenance.
        self.expect(&format!("enable server {b}/{name}"), &[]).await
    }

    /// Sets a server's weight and makes it ready (out of drain or maintenance).
    pub async fn set_weight(&self, name: &str, weight: u16) -> Result<(), HaproxyError> {
        let b = &self.backend;
        self.expect(&format!("set server {b}/{name} weight {weight}"), &[])
            .await?;
        self.expect(&format!("set server {b}/{name} state ready"), &[]).await
    }

    /// Drains a server (no new requests), waits up to `timeout` for its sessions to end, then removes it.
    pub async fn remove(&self, name: &str, timeout: Duration) -> Result<(), HaproxyError> {
        let b = &self.backend;
        self.expect(&format!("set server {b}/{name} state drain"), &[]).await?;
        let until = tokio::time::Instant::now() + timeout;
        while self.sessions(name).await? > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.expect(&format!("set server {b}/{name} state maint"), &[]).await?;
        let _ = self.command(&format!("shutdown sessions server {b}/{name}")).await;
        // Connections kept idle for reuse go shortly after the maintenance: try again for a moment.
        let mut last = None;
        for _ in 0..50 {
            match self
                .expect(&format!("del server {b}/{name}"), &["Server deleted"])
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.expect("tried at least once"))
    }

    /// A server's current sessions (`scur` of `show stat`).
    async fn sessions(&self, name: &str) -> Result<u64, HaproxyError> {
        let command = format!("show stat {} 4 -1", self.backend);
        let answer = self.command(&command).await?;
        let mut lines = answer.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let (Some(sv), Some(scur)) = (
            header.iter().position(|h| *h == "svname"),
            header.iter().position(|h| *h == "scur"),
        ) else {
            return Err(HaproxyError::Refused { command, answer });
        };
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.get(sv) == Some(&name))
            .and_then(|f| f.get(scur).and_then(|v| v.parse().ok()))
            .unwrap_or(0))
    }
}

/// Parses `show servers state BACKEND` (format version 1): `None` when it is not that format (an error
/// message such as `Can't find backend.`).
pub fn parse_servers_state(text: &str) -> Option<Vec<Server>> {
    let mut lines = text.lines();
    if lines.next()?.trim() != "1" {
        return None;
    }
    let mut servers = Vec::new();
    for line in lines {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        // be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight
        // srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state
        // srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port …
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 19 {
            return None;
        }
        servers.push(Server {
            name: f[3].to_owned(),
            addr: f[4].to_owned(),
            admin: f[6].parse().ok()?,
            weight: f[7].parse().ok()?,
            port: f[18].parse().ok()?,
        });
    }
    Some(servers)
}

/// Checks that `name` is an HAProxy identifier (a backend's or a server's): letters, digits, `-`, `_`, `.`
/// and `:`, at most 64 of them. Anything else could end a runtime-API command early or start another.
pub fn check_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "{:?} must be 1 to 64 characters",
            name.escape_debug().to_string()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!(
            "{:?} holds {:?}; HAProxy names are letters, digits, `-`, `_`, `.` and `:`",
            name.escape_debug().to_string(),
            c
        ));
    }
    Ok(())
}

/// A server name for `container` running `version`, of the letters, digits, `-`, `_` and `.` HAProxy allows.
pub fn server_name(container: &str, version: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("{}-{}", clean(container), clean(version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_state_is_parsed_and_errors_are_not() {
        // As HAProxy 2.6 printed it for a backend with one configured and one added server.
        let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 agents 1 a1 10.0.0.2 2 0 90 90 12 1 0 0 0 0 0 0 - 8080 - 0 0 - - 0\n3 agents 2 a1-2.0.0 10.0.0.3 2 8 10 10 3 1 0 0 0 0 0 0 - 8080 - 0 0 - - 0\n";
        let s = parse_servers_state(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].endpoint(), "10.0.0.2:8080");
        assert_eq!((s[0].weight, s[0].admin), (90, 0));
        assert_eq!((s[1].name.as_str(), s[1].weight, s[1].admin), ("a1-2.0.0", 10, 8));
        assert_eq!(parse_servers_state("Can't find backend.\n"), None);
    }

    #[test]
    fn names_that_would_inject_a_command_are_refused() {
        assert!(check_identifier("relays").is_ok());
        assert!(check_identifier("be_agents-2:eu.1").is_ok());
        for bad in [
            "relays;shutdown frontend www",
            "a\nshow info",
            "",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(check_identifier(bad).is_err(), "{bad:?}");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let h = Haproxy::new("/nonexistent.sock", "relays;shutdown frontend www");
        let err = rt.block_on(h.servers()).unwrap_err().to_string();
        assert!(err.contains("not sent"), "{err}");
    }

    #[test]
    fn server_names_keep_only_what_haproxy_allows() {
        assert_eq!(server_name("agent-1", "2.0.0"), "agent-1-2.0.0");
        assert_eq!(server_name("a", "sha256:ab/c"), "a-sha256_ab_c");
    }
}
