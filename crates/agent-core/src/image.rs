//! Image references: `[registry[:port]/]path[:tag][@sha256:hex]`, parsed and normalized as Docker does.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The registry Docker assumes when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";
const OFFICIAL_NAMESPACE: &str = "library";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// The part of an image reference an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefPart {
    /// The registry host and optional port (`127.0.0.1:5000`).
    Registry,
    /// The repository path (`acme/node-agent`).
    Repository,
    /// The tag after `:`.
    Tag,
    /// The digest after `@`.
    Digest,
}

impl fmt::Display for RefPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefPart::Registry => "registry",
            RefPart::Repository => "repository path",
            RefPart::Tag => "tag",
            RefPart::Digest => "digest",
        })
    }
}

/// Why a string is not a valid image reference, tag or digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImageRefError {
    /// The input was empty.
    #[error("empty {part}: give an image such as `registry:5000/acme/agent:1.2.3`")]
    Empty {
        /// Which part was empty.
        part: RefPart,
    },
    /// A character that the part does not allow.
    #[error("invalid image reference {input:?}: character {found:?} at position {position} is not allowed in the {part} ({expected})")]
    InvalidCharacter {
        /// The whole input.
        input: String,
        /// Which part holds the character.
        part: RefPart,
        /// Byte offset of the character in `input`.
        position: usize,
        /// The offending character.
        found: char,
        /// What the part accepts.
        expected: &'static str,
    },
    /// A `/`-separated component, a tag or a port was empty.
    #[error("invalid image reference {input:?}: empty {part} component at position {position}")]
    EmptyComponent {
        /// The whole input.
        input: String,
        /// Which part.
        part: RefPart,
        /// Byte offset where the empty component starts.
        position: usize,
    },
    /// A part longer than Docker accepts.
    #[error("invalid image reference {input:?}: the {part} is {len} characters long, at most {max} are allowed")]
    TooLong {
        /// The whole input.
        input: String,
        /// Which part.
        part: RefPart,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A digest that is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid digest {input:?}: {reason}; a digest is `sha256:` followed by 64 lowercase hex digits")]
    InvalidDigest {
        /// The digest text.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A validated image tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn parse_at(input: &str, tag: &str, offset: usize) -> Result<Tag, ImageRefError> {
        if tag.is_empty() {
            return Err(ImageRefError::EmptyComponent {
                input: input.to_owned(),
                part: RefPart::Tag,
                position: offset,
            });
        }
        if tag.len() > MAX_TAG_LEN {
            return Err(ImageRefError::TooLong {
                input: input.to_owned(),
                part: RefPart::Tag,
                len: tag.len(),
                max: MAX_TAG_LEN,
            });
        }
        for (i, c) in tag.char_indices() {
            let ok = c.is_ascii_alphanumeric() || c == '_' || (i > 0 && (c == '.' || c == '-'));
            if !ok {
                return Err(ImageRefError::InvalidCharacter {
                    input: input.to_owned(),
                    part: RefPart::Tag,
                    position: offset + i,
                    found: c,
                    expected: "letters, digits, '_', and '.' or '-' after the first character",
                });
            }
        }
        Ok(Tag(tag.to_owned()))
    }
}

impl FromStr for Tag {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tag::parse_at(s, s, 0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A content digest: `sha256:` followed by 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// The full digest text, `sha256:…`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, as Docker shows short ids.
    pub fn short(&self) -> &str {
        &self.0[7..19]
    }
}

impl FromStr for Digest {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| ImageRefError::InvalidDigest {
            input: s.to_owned(),
            reason,
        };
        let Some(hex) = s.strip_prefix("sha256:") else {
            return Err(invalid("it does not start with `sha256:`"));
        };
        if hex.len() != 64 {
            return Err(invalid("the hex part is not 64 characters long"));
        }
        if !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(invalid("the hex part has a character other than 0-9 and a-f"));
        }
        Ok(Digest(s.to_owned()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A normalized image reference.
///
/// `agent` means `docker.io/library/agent`; `acme/agent:1.2` means `docker.io/acme/agent:1.2`;
/// a first component with a `.` or `:` or equal to `localhost` is a registry. [`Display`](fmt::Display)
/// prints the fully qualified form, which parses back to the same value.
///
/// ```
/// use agent_core::ImageRef;
/// let r: ImageRef = "127.0.0.1:5000/acme/agent:1.4.2".parse().unwrap();
/// assert_eq!(r.registry(), "127.0.0.1:5000");
/// assert_eq!(r.repository(), "acme/agent");
/// assert_eq!(r.tag().unwrap().as_str(), "1.4.2");
/// let official: ImageRef = "agent".parse().unwrap();
/// assert_eq!(official.to_string(), "docker.io/library/agent");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<Tag>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// The registry host with its optional port (`docker.io` when the reference names none).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path (`library/agent` for an official image).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The explicit tag, if any.
    pub fn tag(&self) -> Option<&Tag> {
        self.tag.as_ref()
    }

    /// The digest pin, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The tag the engine uses: the explicit one, or `latest` when there is neither tag nor digest.
    pub fn effective_tag(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t.as_str()),
            (None, None) => Some("latest"),
            (None, Some(_)) => None,
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short form the docker CLI shows (`agent:1.0` for `docker.io/library/agent:1.0`).
    pub fn familiar(&self) -> String {
        let first = self.repository.split('/').next().unwrap_or_default();
        // Dropping `docker.io/` must not make the first component read as a registry.
        let ambiguous = self.repository.contains('/') && (first.contains(['.', ':']) || first == "localhost");
        let name = if self.registry == DEFAULT_REGISTRY && !ambiguous {
            self.repository
                .strip_prefix("library/")
                .filter(|rest| !rest.contains('/'))
                .unwrap_or(&self.repository)
                .to_owned()
        } else {
            self.name()
        };
        let mut out = name;
        if let Some(t) = &self.tag {
            out.push(':');
            out.push_str(t.as_str());
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(d.as_str());
        }
        out
    }

    /// The same reference pinned to `digest` (the tag is kept for readability; the engine uses the digest).
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: Tag) -> ImageRef {
        ImageRef {
            tag: Some(tag),
            digest: None,
            ..self.clone()
        }
    }

    /// The reference as the engine should pull it: `name@digest` when pinned, else `name:tag`.
    pub fn pull_ref(&self) -> String {
        match (&self.digest, self.effective_tag()) {
            (Some(d), _) => format!("{}@{}", self.name(), d),
            (None, Some(t)) => format!("{}:{}", self.name(), t),
            (None, None) => self.name(),
        }
    }

    /// Parses and normalizes a reference.
    pub fn parse(input: &str) -> Result<ImageRef, ImageRefError> {
        if input.is_empty() {
            return Err(ImageRefError::Empty {
                part: RefPart::Repository,
            });
        }
        let (name_and_tag, digest) = match input.find('@') {
            Some(at) => {
                let d = &input[at + 1..];
                if d.is_empty() {
                    return Err(ImageRefError::EmptyComponent {
                        input: input.to_owned(),
                        part: RefPart::Digest,
                        position: at + 1,
                    });
                }
                (&input[..at], Some(d.parse::<Digest>()?))
            }
            None => (input, None),
        };
        let last_slash = name_and_tag.rfind('/');
        let (name, tag) = match name_and_tag.rfind(':') {
            Some(colon) if last_slash.is_none_or(|s| colon > s) => (
                &name_and_tag[..colon],
                Some(Tag::parse_at(input, &name_and_tag[colon + 1..], colon + 1)?),
            ),
            _ => (name_and_tag, None),
        };
        if name.is_empty() {
            return Err(ImageRefError::EmptyComponent {
                input: input.to_owned(),
                part: RefPart::Repository,
                position: 0,
            });
        }
        let (registry, path, path_offset) = match name.find('/') {
            Some(slash) => {
                let first = &name[..slash];
                let is_registry =
                    first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase());
                if is_registry {
                    validate_registry(input, first)?;
                    (first, &name[slash + 1..], slash + 1)
                } else {
                    (DEFAULT_REGISTRY, name, 0)
                }
            }
            None => (DEFAULT_REGISTRY, name, 0),
        };
        validate_path(input, path, path_offset)?;
        let registry = if registry == LEGACY_DEFAULT_REGISTRY {
            DEFAULT_REGISTRY
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{path}")
        } else {
            path.to_owned()
        };
        let full_len = registry.len() + 1 + repository.len();
        if full_len > MAX_NAME_LEN {
            return Err(ImageRefError::TooLong {
                input: input.to_owned(),
                part: RefPart::Repository,
                len: full_len,
                max: MAX_NAME_LEN,
            });
        }
        Ok(ImageRef {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }
}

fn validate_registry(input: &str, registry: &str) -> Result<(), ImageRefError> {
    let (host, port) = match registry.rfind(':') {
        Some(c) => (&registry[..c], Some((c, &registry[c + 1..]))),
        None => (registry, None),
    };
    let bad = |position, found, expected| ImageRefError::InvalidCharacter {
        input: input.to_owned(),
        part: RefPart::Registry,
        position,
        found,
        expected,
    };
    for (ci, component) in split_offsets(host, '.') {
        if component.is_empty() {
            return Err(ImageRefError::EmptyComponent {
                input: input.to_owned(),
                part: RefPart::Registry,
                position: ci,
            });
        }
        for (i, c) in component.char_indices() {
            let edge = i == 0 || i + c.len_utf8() == component.len();
            if !(c.is_ascii_alphanumeric() || (c == '-' && !edge)) {
                return Err(bad(
                    ci + i,
                    c,
                    "host names are letters, digits and inner '-', separated by '.'",
                ));
            }
        }
    }
    if let Some((c, port)) = port {
        if port.is_empty() {
            return Err(ImageRefError::EmptyComponent {
                input: input.to_owned(),
                part: RefPart::Registry,
                position: c + 1,
            });
        }
        if let Some((i, ch)) = port.char_indices().find(|(_, ch)| !ch.is_ascii_digit()) {
            return Err(bad(c + 1 + i, ch, "a port is digits only"));
        }
    }
    Ok(())
}

fn validate_path(input: &str, path: &str, offset: usize) -> Result<(), ImageRefError> {
    const EXPECTED: &str =
        "lowercase letters and digits, separated by '.', '_', '__' or dashes, and '/' between components";
    for (ci, component) in split_offsets(path, '/') {
        let at = offset + ci;
        if component.is_empty() {
            return Err(ImageRefError::EmptyComponent {
                input: input.to_owned(),
                part: RefPart::Repository,
                position: at,
            });
        }
        let bytes = component.as_bytes();
        let mut i = 0;
        let mut prev_alnum = false;
        while i < bytes.len() {
            let c = component[i..].chars().next().unwrap_or('?');
            let is_alnum = c.is_ascii_lowercase() || c.is_ascii_digit();
            if is_alnum {
                prev_alnum = true;
                i += 1;
                continue;
            }
            // A separator: '.', '_', '__' or one or more '-'; it must sit between alphanumerics.
            let sep_len = match c {
                '.' => 1,
                '_' if bytes.get(i + 1) == Some(&b'_') => 2,
                '_' => 1,
                '-' => bytes[i..].iter().take_while(|&&b| b == b'-').count(),
                _ => {
                    return Err(ImageRefError::InvalidCharacter {
                        input: input.to_owned(),
                        part: RefPart::Repository,
                        position: at + i,
                        found: c,
                        expected: EXPECTED,
                    })
                }
            };
            let next_alnum = bytes
                .get(i + sep_len)
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !prev_alnum || !next_alnum {
                let position = if prev_alnum { i + sep_len } else { i };
                let found = component[position.min(component.len().saturating_sub(1))..]
                    .chars()
                    .next()
                    .unwrap_or(c);
                return Err(ImageRefError::InvalidCharacter {
                    input: input.to_owned(),
                    part: RefPart::Repository,
                    position: at + position.min(component.len() - 1),
                    found,
                    expected: EXPECTED,
                });
            }
            prev_alnum = false;
            i += sep_len;
        }
    }
    Ok(())
}

fn split_offsets(s: &str, sep: char) -> impl Iterator<Item = (usize, &str)> {
    let mut start = 0;
    s.split(sep).map(move |part| {
        let at = start;
        start += part.len() + sep.len_utf8();
        (at, part)
    })
}

impl FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_str!(ImageRef);
serde_via_str!(Tag);
serde_via_str!(Digest);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("agent", "docker.io/library/agent"),
            ("agent:1.0", "docker.io/library/agent:1.0"),
            ("acme/agent", "docker.io/acme/agent"),
            ("index.docker.io/acme/agent", "docker.io/acme/agent"),
            ("localhost/agent", "localhost/agent"),
            (
                "127.0.0.1:5000/acme/node-agent:1.4.2",
                "127.0.0.1:5000/acme/node-agent:1.4.2",
            ),
            (
                "registry.example.com/a/b/c__d.e-f:v1_2",
                "registry.example.com/a/b/c__d.e-f:v1_2",
            ),
        ];
        for (input, want) in cases {
            let r: ImageRef = input.parse().unwrap();
            assert_eq!(r.to_string(), want, "{input}");
            assert_eq!(r.to_string().parse::<ImageRef>().unwrap(), r);
        }
        assert_eq!("agent:1".parse::<ImageRef>().unwrap().familiar(), "agent:1");
    }

    #[test]
    fn digest_and_tag_together() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let r: ImageRef = format!("127.0.0.1:5000/a:1.0@{d}").parse().unwrap();
        assert_eq!(r.digest().unwrap().as_str(), d);
        assert_eq!(r.pull_ref(), format!("127.0.0.1:5000/a@{d}"));
        assert_eq!(r.effective_tag(), Some("1.0"));
        let untagged: ImageRef = "a".parse().unwrap();
        assert_eq!(untagged.effective_tag(), Some("latest"));
    }

    #[test]
    fn errors_name_the_part_and_position() {
        let err = "acme/Agent:1".parse::<ImageRef>().unwrap_err();
        assert!(
            matches!(
                err,
                ImageRefError::InvalidCharacter {
                    part: RefPart::Repository,
                    position: 5,
                    found: 'A',
                    ..
                }
            ),
            "{err:?}"
        );
        let err = "acme/agent:-1".parse::<ImageRef>().unwrap_err();
        assert!(
            matches!(
                err,
                ImageRefError::InvalidCharacter {
                    part: RefPart::Tag,
                    position: 11,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = "acme//agent".parse::<ImageRef>().unwrap_err();
        assert!(
            matches!(
                err,
                ImageRefError::EmptyComponent {
                    part: RefPart::Repository,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = "host:50x0/agent".parse::<ImageRef>().unwrap_err();
        assert!(
            matches!(
                err,
                ImageRefError::InvalidCharacter {
                    part: RefPart::Registry,
                    found: 'x',
                    ..
                }
            ),
            "{err:?}"
        );
        let err = "agent@sha256:abc".parse::<ImageRef>().unwrap_err();
        assert!(matches!(err, ImageRefError::InvalidDigest { .. }), "{err:?}");
        let err = "agent:".parse::<ImageRef>().unwrap_err();
        assert!(
            matches!(err, ImageRefError::EmptyComponent { part: RefPart::Tag, .. }),
            "{err:?}"
        );
        let err = "a-/b".parse::<ImageRef>().unwrap_err();
        assert!(
            matches!(
                err,
                ImageRefError::InvalidCharacter {
                    part: RefPart::Repository,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!("".parse::<ImageRef>().is_err());
        let msg = "acme/Agent:1".parse::<ImageRef>().unwrap_err().to_string();
        assert!(
            msg.contains("'A'") && msg.contains("position 5") && msg.contains("repository"),
            "{msg}"
        );
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,6}((\\.|_|__|-{1,2})[a-z0-9]{1,6}){0,2}"
    }

    fn reference() -> impl Strategy<Value = String> {
        (
            prop::option::of((
                "[a-z][a-z0-9]{0,5}(\\.[a-z0-9]{1,5}){0,2}",
                prop::option::of(1u16..65535),
            )),
            prop::collection::vec(component(), 1..4),
            prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            prop::option::of("[0-9a-f]{64}"),
        )
            .prop_map(|(reg, path, tag, digest)| {
                let mut s = String::new();
                if let Some((host, port)) = reg {
                    // A registry is recognized by a '.' or ':'; give plain hosts a port.
                    s.push_str(&host);
                    match port {
                        Some(p) => s.push_str(&format!(":{p}")),
                        None if !host.contains('.') => s.push_str(":5000"),
                        None => {}
                    }
                    s.push('/');
                }
                if s.is_empty() && path.len() > 1 && path[0].contains('.') {
                    // Docker reads such a first component as a registry; name the default one explicitly.
                    s.push_str("docker.io/");
                }
                s.push_str(&path.join("/"));
                if let Some(t) = tag {
                    s.push(':');
                    s.push_str(&t);
                }
                if let Some(d) = digest {
                    s.push_str("@sha256:");
                    s.push_str(&d);
                }
                s
            })
    }

    proptest! {
        #[test]
        fn valid_references_round_trip(input in reference()) {
            let parsed: ImageRef = input.parse().unwrap();
            let printed = parsed.to_string();
            prop_assert_eq!(printed.parse::<ImageRef>().unwrap(), parsed.clone());
            prop_assert_eq!(parsed.familiar().parse::<ImageRef>().unwrap(), parsed);
        }

        #[test]
        fn uppercase_or_bad_characters_in_the_path_are_rejected(
            prefix in component(),
            bad in "[A-Z!$%&*()+=\\[\\]{};'\" ]",
        ) {
            let input = format!("acme/{prefix}{bad}x");
            let is_rejected = input.parse::<ImageRef>().is_err();
            prop_assert!(is_rejected, "{} was accepted", input);
        }

        #[test]
        fn parser_never_panics(input in "\\PC{0,80}") {
            let _ = input.parse::<ImageRef>();
        }
    }
}
