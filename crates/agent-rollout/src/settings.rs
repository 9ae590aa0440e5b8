//! One parser for the verification settings the CLI flags and a rollout spec's `health:` share: metric checks
//! (`agent_up == 1`) and the control-center token file.

use std::path::Path;

use agent_health::Condition;

/// Splits `agent_requests_total{code="500"} < 5` into the selector and a condition over its value.
pub fn parse_metric_check(text: &str) -> Result<(String, Condition), String> {
    let t = text.trim();
    let mut end = t
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(t.len());
    if end == 0 {
        return Err(format!(
            "{text:?} does not start with a metric name; write e.g. `agent_up == 1`"
        ));
    }
    if t[end..].starts_with('{') {
        let mut in_quotes = false;
        let mut escaped = false;
        let close = t[end..].char_indices().find(|&(_, c)| {
            let hit = c == '}' && !in_quotes;
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quotes = !in_quotes;
            }
            hit
        });
        end += close
            .map(|(i, _)| i + 1)
            .ok_or_else(|| format!("{text:?}: unclosed '{{'"))?;
    }
    let condition = Condition::parse(&format!("result {}", t[end..].trim()))?;
    Ok((t[..end].to_owned(), condition))
}

/// A bearer token read by [`read_token`], with a warning for the operator when its file is readable by
/// every user.
#[derive(Clone)]
pub struct Token {
    /// The token (trimmed).
    pub value: String,
    /// What the operator should fix, when something should be.
    pub warning: Option<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("warning", &self.warning)
            .finish_non_exhaustive()
    }
}

/// Why a token could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read the token file {path}: {message}")]
    Unreadable {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        message: String,
    },
    /// Every user may write the file: anyone could put their own token there.
    #[error("the token file {path} is writable by every user (mode {mode:o}); `chmod 600` it")]
    WorldWritable {
        /// The file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// No file and no `AGENTCTL_CC_TOKEN`.
    #[error("the control center needs a token: give --token-file FILE (or --heartbeat-token-file, or `tokenFile:` in a spec), or set AGENTCTL_CC_TOKEN")]
    Missing,
    /// Shorter than 16 characters.
    #[error("the control-center token must be at least 16 characters")]
    TooShort,
}

/// Reads a bearer token from `file`, or from `AGENTCTL_CC_TOKEN`. As ssh does with keys: a file every user
/// can write is refused, one every user can read is accepted with a warning.
pub fn read_token(file: Option<&Path>) -> Result<Token, TokenError> {
    let mut warning = None;
    let token = match file {
        Some(f) => {
            use std::os::unix::fs::PermissionsExt;
            let unreadable = |e: std::io::Error| TokenError::Unreadable {
                path: f.to_owned(),
                message: e.to_string(),
            };
            let mode = std::fs::metadata(f).map_err(unreadable)?.permissions().mode() & 0o777;
            if mode & 0o002 != 0 {
                return Err(TokenError::WorldWritable {
                    path: f.to_owned(),
                    mode,
                });
            }
            if mode & 0o004 != 0 {
                warning = Some(format!(
                    "the token file {} is readable by every user (mode {mode:o}); `chmod 600` it",
                    f.display()
                ));
            }
            std::fs::read_to_string(f).map_err(unreadable)?
        }
        None => std::env::var("AGENTCTL_CC_TOKEN").map_err(|_| TokenError::Missing)?,
    };
    let value = token.trim().to_owned();
    if value.len() < 16 {
        return Err(TokenError::TooShort);
    }
    Ok(Token { value, warning })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_checks() {
        let (s, c) = parse_metric_check("agent_up == 1").unwrap();
        assert_eq!(s, "agent_up");
        assert!(c.holds(1.0));
        let (s, c) = parse_metric_check(r#"agent_requests_total{code="500",path="a}b"} < 5"#).unwrap();
        assert_eq!(s, r#"agent_requests_total{code="500",path="a}b"}"#);
        assert!(c.holds(4.0) && !c.holds(5.0));
        assert!(parse_metric_check("== 1").is_err());
        assert!(parse_metric_check("agent_up").is_err());
        assert!(parse_metric_check("x{a=\"1\" < 2").is_err());
    }

    #[test]
    fn token_files_others_can_write_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "0123456789abcdef-token").unwrap();
        let set = |mode| std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        set(0o600);
        let t = read_token(Some(f.path())).unwrap();
        assert_eq!(t.value, "0123456789abcdef-token");
        assert!(t.warning.is_none());
        set(0o644);
        let t = read_token(Some(f.path())).unwrap();
        assert!(t.warning.unwrap().contains("readable by every user"));
        set(0o666);
        let err = read_token(Some(f.path())).unwrap_err().to_string();
        assert!(
            err.contains("writable by every user") && err.contains("chmod 600"),
            "{err}"
        );
    }
}
