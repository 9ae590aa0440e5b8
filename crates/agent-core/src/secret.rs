//! Secrets in a container's environment: which variables are secret ([`SecretPolicy`]), and values that
//! are never shown or stored ([`Secret`], [`EnvVar`]).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What stands in for a secret value wherever a spec is shown or stored.
pub const REDACTED: &str = "<redacted>";

/// A secret value. `Debug`, `Display` and serialization never show it; a deserialized secret is redacted
/// (its value is unknown) unless the source carried it explicitly.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Option<String>);

impl Secret {
    /// Wraps a known secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(Some(value.into()))
    }

    /// A secret whose value was redacted when it was stored.
    pub fn redacted() -> Secret {
        Secret(None)
    }

    /// The value, when it is known.
    pub fn expose(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// The value of an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    /// Shown and stored as is.
    Plain(String),
    /// Never shown or stored.
    Secret(Secret),
}

/// One environment variable of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// The variable's name.
    pub name: String,
    /// Its value.
    pub value: EnvValue,
}

impl EnvVar {
    /// A plain variable.
    pub fn plain(name: impl Into<String>, value: impl Into<String>) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: EnvValue::Plain(value.into()),
        }
    }

    /// A secret variable.
    pub fn secret(name: impl Into<String>, value: impl Into<String>) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: EnvValue::Secret(Secret::new(value)),
        }
    }

    /// Whether the value is secret.
    pub fn is_secret(&self) -> bool {
        matches!(self.value, EnvValue::Secret(_))
    }

    /// The real value when known (secret or not); `None` for a redacted secret.
    pub fn expose(&self) -> Option<&str> {
        match &self.value {
            EnvValue::Plain(v) => Some(v),
            EnvValue::Secret(s) => s.expose(),
        }
    }

    /// The value as it may be shown: secrets as [`REDACTED`].
    pub fn shown(&self) -> &str {
        match &self.value {
            EnvValue::Plain(v) => v,
            EnvValue::Secret(_) => REDACTED,
        }
    }

    /// `NAME=value` for the engine, `None` when the value is a redacted secret.
    pub fn to_engine(&self) -> Option<String> {
        self.expose().map(|v| format!("{}={}", self.name, v))
    }
}

impl fmt::Display for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.shown())
    }
}

#[derive(Serialize, Deserialize)]
struct EnvVarRepr {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    secret: bool,
}

impl Serialize for EnvVar {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let repr = match &self.value {
            EnvValue::Plain(v) => EnvVarRepr {
                name: self.name.clone(),
                value: Some(v.clone()),
                secret: false,
            },
            EnvValue::Secret(_) => EnvVarRepr {
                name: self.name.clone(),
                value: None,
                secret: true,
            },
        };
        repr.serialize(s)
    }
}

impl<'de> Deserialize<'de> for EnvVar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = EnvVarRepr::deserialize(d)?;
        let value = match (r.secret, r.value) {
            (true, v) => EnvValue::Secret(Secret(v)),
            (false, Some(v)) => EnvValue::Plain(v),
            (false, None) => {
                return Err(serde::de::Error::custom(format!(
                    "env variable `{}` has no value; give `value`, or `secret: true` for a redacted secret",
                    r.name
                )))
            }
        };
        Ok(EnvVar { name: r.name, value })
    }
}

/// Which environment variables are secret: names matching a glob (`*` matches any run, case-insensitive) or
/// named explicitly, and any variable whose value carries URL credentials (`scheme://user:password@host`);
/// `plain` names are never secret (for a name the patterns catch by accident, like `KEYBOARD_LAYOUT`).
///
/// The default patterns take any name containing `SECRET`, `PASSWORD`, `PASSWD`, `PASSPHRASE`, `PWD`,
/// `TOKEN`, `KEY`, `CREDENTIAL`, `PRIVATE` or `AUTH`, names ending in `_PASS` or `_PAT` (or `PASS`, `PAT`
/// alone) and names with a `_PASS_` part. Over-redaction costs nothing but a value that is taken from the
/// running container instead of the store. A value shaped like a secret ([`secret_value_kind`]) makes its
/// variable secret whatever its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SecretPolicy {
    /// Name patterns, case-insensitive, `*` as wildcard.
    pub patterns: Vec<String>,
    /// Names that are secret whatever the patterns say.
    pub names: Vec<String>,
    /// Names that are never secret, whatever the patterns say (their value must not carry credentials).
    pub plain: Vec<String>,
}

impl Default for SecretPolicy {
    fn default() -> Self {
        SecretPolicy {
            patterns: [
                "*SECRET*",
                "*PASSWORD*",
                "*PASSWD*",
                "*PASSPHRASE*",
                "*_PASS",
                "*_PASS_*",
                "PASS",
                "*PWD*",
                "*TOKEN*",
                "*KEY*",
                "*CREDENTIAL*",
                "*PRIVATE*",
                "*AUTH*",
                "*_PAT",
                "PAT",
            ]
            .map(String::from)
            .to_vec(),
            names: Vec::new(),
            plain: Vec::new(),
        }
    }
}

/// Whether `value` holds a URL with a password in its user info (`postgres://user:pw@host/db`).
pub fn has_url_credentials(value: &str) -> bool {
    value.split_whitespace().any(|word| {
        let Some((scheme, rest)) = word.split_once("://") else {
            return false;
        };
        let valid_scheme = !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        valid_scheme
            && authority
                .rsplit_once('@')
                .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    })
}

/// What kind of secret `value` looks like by its shape, whatever its name: a URL with a password, a private
/// key, an AWS access key id, a GitHub, GitLab, Stripe or Slack token, a Slack webhook URL, a JSON Web
/// Token. `None` when it looks like none of them (random hex and plain words are not flagged).
pub fn secret_value_kind(value: &str) -> Option<&'static str> {
    if has_url_credentials(value) {
        return Some("a URL with a password");
    }
    if value.contains("-----BEGIN") && value.contains("PRIVATE KEY") {
        return Some("a private key");
    }
    if value.contains("hooks.slack.com/services/") || value.contains("hooks.slack.com/workflows/") {
        return Some("a Slack webhook URL");
    }
    value
        .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .find_map(token_kind)
}

/// The kind of access token `word` is shaped like: fixed prefixes, so random hex is not flagged.
fn token_kind(word: &str) -> Option<&'static str> {
    if word.len() == 20
        && word.starts_with("AKIA")
        && word.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    {
        return Some("an AWS access key id");
    }
    let prefixed = [
        ("ghp_", "a GitHub token"),
        ("gho_", "a GitHub token"),
        ("ghs_", "a GitHub token"),
        ("ghu_", "a GitHub token"),
        ("github_pat_", "a GitHub token"),
        ("glpat-", "a GitLab token"),
        ("sk_live_", "a Stripe secret key"),
        ("sk_test_", "a Stripe secret key"),
        ("rk_live_", "a Stripe secret key"),
        ("xoxb-", "a Slack token"),
        ("xoxp-", "a Slack token"),
        ("xoxa-", "a Slack token"),
    ];
    for (prefix, kind) in prefixed {
        if let Some(rest) = word.strip_prefix(prefix) {
            if rest.len() >= 16
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            {
                return Some(kind);
            }
        }
    }
    // A JSON Web Token: three base64url parts, the first two JSON objects (`eyJ` is `{"`).
    let parts: Vec<&str> = word.split('.').collect();
    if parts.len() == 3
        && parts[0].starts_with("eyJ")
        && parts[1].starts_with("eyJ")
        && parts[0].len() >= 10
        && parts[2].len() >= 10
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return Some("a JSON Web Token");
    }
    None
}

/// The names of URL query parameters whose values are secret (`?password=…`, `&sslpassword=…`, `token=…`):
/// any that contains one of these, case-insensitive.
const SECRET_PARAMETERS: [&str; 6] = ["pass", "secret", "token", "key", "auth", "credential"];

/// `text` with the password of every URL in it replaced by [`REDACTED`] (`https://u:<redacted>@host/`),
/// user info that is a token alone (`https://ghp_…@host`) too, and the values of secret-looking query
/// parameters (`?password=<redacted>`).
pub fn redact_url_credentials(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            let Some((scheme, rest)) = word.split_once("://") else {
                return word.to_owned();
            };
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(authority_end);
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) if userinfo.contains(':') => {
                    let user = userinfo.split(':').next().unwrap_or_default();
                    format!("{user}:{REDACTED}@{host}")
                }
                Some((userinfo, host)) if token_kind(userinfo).is_some() || userinfo.len() >= 32 => {
                    format!("{REDACTED}@{host}")
                }
                _ => authority.to_owned(),
            };
            format!("{scheme}://{authority}{}", redact_query(tail))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `tail` (path, query, fragment) with the values of secret-looking query parameters redacted.
fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let (query, fragment) = query.split_once('#').map_or((query, None), |(q, f)| (q, Some(f)));
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if SECRET_PARAMETERS.iter().any(|s| k.to_ascii_lowercase().contains(s)) => {
                format!("{k}={REDACTED}")
            }
            _ => p.to_owned(),
        })
        .collect();
    let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
    format!("{path}?{}{fragment}", params.join("&"))
}

/// `url` without any user info (`https://TOKEN@host/repo` → `https://host/repo`): for a URL that is
/// published (an image label), where even a user name alone may be a token.
pub fn strip_url_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{}", redact_query(tail))
}

impl SecretPolicy {
    /// Whether a variable named `name` is secret by its name.
    pub fn is_secret(&self, name: &str) -> bool {
        let upper = name.to_ascii_uppercase();
        if self.plain.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return false;
        }
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
            || self
                .patterns
                .iter()
                .any(|p| glob_match(&p.to_ascii_uppercase(), &upper))
    }

    /// Parses an engine `NAME=value` string into a variable, marking it secret per this policy: by its name,
    /// or because its value carries URL credentials (whatever the name, `plain` included).
    pub fn classify(&self, raw: &str) -> EnvVar {
        let (name, value) = raw.split_once('=').unwrap_or((raw, ""));
        if self.is_secret(name) || secret_value_kind(value).is_some() {
            EnvVar::secret(name, value)
        } else {
            EnvVar::plain(name, value)
        }
    }
}

fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_policy_globs() {
        let p = SecretPolicy {
            names: vec!["DSN".into()],
            ..SecretPolicy::default()
        };
        assert!(p.is_secret("api_token"));
        assert!(p.is_secret("DB_PASSWORD"));
        assert!(p.is_secret("MY_PASSWD_FILE"));
        assert!(p.is_secret("dsn"));
        assert!(!p.is_secret("LOG_LEVEL"));
        // The names an outside probe found stored in plain text.
        for name in [
            "PASSWORD",
            "API_KEY",
            "SECRET_KEY",
            "PGPASSWORD",
            "AWS_SECRET_ACCESS_KEY",
            "GITHUB_PAT",
            "TOKEN_COUNT",
            "OAUTH_CLIENT",
            "GPG_PRIVATE",
            "DB_CREDENTIALS",
        ] {
            assert!(p.is_secret(name), "{name}");
        }
        for name in ["PATH", "HOSTNAME", "AGENT_VERSION", "HEARTBEAT_INTERVAL_MS", "PATTERN"] {
            assert!(!p.is_secret(name), "{name}");
        }
        let p = SecretPolicy {
            plain: vec!["KEYBOARD".into()],
            ..SecretPolicy::default()
        };
        assert!(!p.is_secret("keyboard"));
        assert!(
            p.classify("KEYBOARD=postgres://u:p@h/d").is_secret(),
            "credentials in a value always count"
        );
        assert!(p.classify("DATABASE_URL=postgres://u:p@h/d").is_secret());
        assert!(!p.classify("COLLECTOR_URL=https://collector:4317/v1").is_secret());
        assert!(!p.classify("MAIL=user@example.com").is_secret());
        assert!(has_url_credentials("x redis://:pw@cache:6379/0"));
        assert_eq!(
            redact_url_credentials("post to https://ci:hunter2@hooks.example/x failed"),
            "post to https://ci:<redacted>@hooks.example/x failed"
        );
        assert_eq!(
            redact_url_credentials("http://10.0.0.1:8080/x"),
            "http://10.0.0.1:8080/x"
        );
        assert!(!has_url_credentials("https://user@host/path:with:colons"));
    }
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    #[test]
    fn secrets_are_found_by_their_shape_and_redacted_where_they_appear() {
        for (value, kind) in [
            (
                "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX",
                "a Slack webhook URL",
            ),
            ("sk_live_51HxZ2eKq8f7Xw9Yt0aBcDeF", "a Stripe secret key"),
            (
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                "a JSON Web Token",
            ),
            ("glpat-abcdefghijklmnopqrst", "a GitLab token"),
            ("AKIAIOSFODNN7EXAMPLE", "an AWS access key id"),
            ("postgres://u:pw@db/x", "a URL with a password"),
        ] {
            assert_eq!(secret_value_kind(value), Some(kind), "{value}");
        }
        for plain in [
            "0123456789abcdef0123456789abcdef",
            "debug",
            "eyJ.not.a.jwt",
            "sk_live_short",
        ] {
            assert_eq!(secret_value_kind(plain), None, "{plain}");
        }
        let policy = SecretPolicy::default();
        for name in ["DB_PASS", "SMTP_PASS", "PASS", "MY_PASS_FILE", "GPG_PASSPHRASE"] {
            assert!(policy.is_secret(name), "{name}");
        }
        for name in ["PASSIVE", "COMPASS_URL", "BYPASS"] {
            assert!(!policy.is_secret(name), "{name}");
        }
        assert!(policy
            .classify("NOTIFY=https://hooks.slack.com/services/T0/B0/abcdefabcdefabcdef")
            .is_secret());
    }

    #[test]
    fn urls_lose_passwords_tokens_and_secret_parameters() {
        assert_eq!(
            redact_url_credentials("postgres://agentctl@db/x?sslmode=require&password=hunter2"),
            "postgres://agentctl@db/x?sslmode=require&password=<redacted>"
        );
        assert_eq!(
            redact_url_credentials("https://ghp_abcdefghijklmnopqrstuvwxyz0123456789@github.com/o/r.git"),
            "https://<redacted>@github.com/o/r.git"
        );
        assert_eq!(
            strip_url_userinfo("https://TOKEN@example.com/acme/agent.git"),
            "https://example.com/acme/agent.git"
        );
        assert_eq!(strip_url_userinfo("https://u:p@h/r"), "https://h/r");
        assert_eq!(strip_url_userinfo("git@github.com:o/r.git"), "git@github.com:o/r.git");
    }
}
