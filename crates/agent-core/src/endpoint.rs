//! Engine endpoints in one written form, so that one engine is one target and one history however a
//! user wrote its address (`unix:///var/run/docker.sock`, `…sock/`, `unix:///var/run//docker.sock`,
//! `/run/docker.sock`).
//!
//! The rules are syntactic (no I/O here): a bare absolute path is a unix socket; a socket path loses
//! repeated and trailing slashes and its `.` and `..` segments; a TCP or HTTP(S) address loses its trailing
//! slash and is lower-cased before any path. Which file a socket path names on this machine (a symlink such
//! as `/var/run` → `/run`) is asked of the caller's `resolve`, which returns the real path of an existing
//! socket.

/// The socket of a local engine as the docker CLI and agentctl name it by default.
pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// `endpoint` in its one written form; `resolve` gives the real path of an existing file (`None` when it
/// does not exist), so that two names of one socket are one endpoint. The default socket keeps its
/// default name. An endpoint of another scheme is returned as written (the connector refuses it).
pub fn normalize_endpoint(endpoint: &str, resolve: &dyn Fn(&str) -> Option<String>) -> String {
    let endpoint = endpoint.trim();
    let path = if endpoint.starts_with('/') {
        Some(endpoint)
    } else {
        endpoint.strip_prefix("unix://")
    };
    if let Some(path) = path {
        let clean = clean_path(path);
        let real = resolve(&clean).unwrap_or_else(|| clean.clone());
        let default = DEFAULT_ENDPOINT.trim_start_matches("unix://");
        if real == default || resolve(default).is_some_and(|d| d == real) {
            return DEFAULT_ENDPOINT.to_owned();
        }
        return format!("unix://{real}");
    }
    for scheme in ["tcp://", "http://", "https://"] {
        if endpoint.len() >= scheme.len() && endpoint[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = endpoint[scheme.len()..].trim_end_matches('/');
            let (authority, tail) = rest.split_once('/').map_or((rest, ""), |(a, t)| (a, t));
            let tail = if tail.is_empty() {
                String::new()
            } else {
                format!("/{tail}")
            };
            return format!("{scheme}{}{tail}", authority.to_ascii_lowercase());
        }
    }
    endpoint.to_owned()
}

/// `path` without repeated or trailing slashes and with `.` and `..` resolved lexically.
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine, in the tests: `/var/run` is a symlink to `/run`, and only the docker socket exists.
    fn resolve(path: &str) -> Option<String> {
        let real = path.replacen("/var/run/", "/run/", 1);
        (real == "/run/docker.sock").then_some(real)
    }

    #[test]
    fn one_engine_written_four_ways_is_one_endpoint() {
        for written in [
            "unix:///var/run/docker.sock",
            "unix:///var/run/docker.sock/",
            "unix:///var/run//docker.sock",
            "/run/docker.sock",
            " unix:///run/./docker.sock ",
            "unix:///var/lib/../run/docker.sock",
        ] {
            assert_eq!(normalize_endpoint(written, &resolve), DEFAULT_ENDPOINT, "{written}");
        }
        assert_eq!(
            normalize_endpoint("unix:///tmp//e2/docker.sock/", &resolve),
            "unix:///tmp/e2/docker.sock"
        );
    }

    #[test]
    fn addresses_lose_their_trailing_slash_and_case() {
        assert_eq!(
            normalize_endpoint("TCP://Host.Example:2376/", &resolve),
            "tcp://host.example:2376"
        );
        assert_eq!(
            normalize_endpoint("tcp://127.0.0.1:2375", &resolve),
            "tcp://127.0.0.1:2375"
        );
        assert_eq!(normalize_endpoint("ssh://h", &resolve), "ssh://h");
    }
}
