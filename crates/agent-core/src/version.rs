//! Versions read from tags or image labels, and the tag policy that decides which references may be deployed.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::image::ImageRef;

/// The OCI label that carries an image's version.
pub const VERSION_LABEL: &str = "org.opencontainers.image.version";

/// A semantic version taken from a tag (`1.4.2`, `v1.4.2`, `1.4`) or an image label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(semver::Version);

impl Version {
    /// Parses `1.2.3`, `v1.2.3`, `1.2` (as `1.2.0`) or `1` (as `1.0.0`), with optional pre-release/build.
    pub fn parse(text: &str) -> Option<Version> {
        let t = text.strip_prefix('v').unwrap_or(text);
        if let Ok(v) = semver::Version::parse(t) {
            return Some(Version(v));
        }
        // Pad `1.2` and `1` (but only the numeric core) to three parts.
        let (core, rest) = match t.find(['-', '+']) {
            Some(i) => (&t[..i], &t[i..]),
            None => (t, ""),
        };
        let parts: Vec<&str> = core.split('.').collect();
        if parts.is_empty()
            || parts.len() > 2
            || parts
                .iter()
                .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        let padded = format!("{}{}{}", core, ".0".repeat(3 - parts.len()), rest);
        semver::Version::parse(&padded).ok().map(Version)
    }

    /// The version of an image: its tag when that is a version, else the OCI version label.
    pub fn of_image(image: &ImageRef, labels: &BTreeMap<String, String>) -> Option<Version> {
        image
            .tag()
            .and_then(|t| Version::parse(t.as_str()))
            .or_else(|| labels.get(VERSION_LABEL).and_then(|l| Version::parse(l)))
    }

    /// Whether this is a pre-release (`1.2.0-rc.1`).
    pub fn is_prerelease(&self) -> bool {
        !self.0.pre.is_empty()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which image references may be deployed.
///
/// The default refuses `latest` and the other floating tags (a tag whose content changes over time cannot
/// be rolled back to) and accepts any other tag and any digest pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TagPolicy {
    /// Accept floating tags such as `latest` (`--allow-floating-tag`).
    pub allow_floating: bool,
    /// Tags treated as floating.
    pub floating_tags: Vec<String>,
    /// Only accept tags that are semantic versions (`--semver-only`); digest pins still pass.
    pub semver_only: bool,
    /// Only accept a version newer than the one running (`--newer-only`).
    pub newer_only: bool,
}

impl Default for TagPolicy {
    fn default() -> Self {
        TagPolicy {
            allow_floating: false,
            floating_tags: ["latest", "stable", "edge", "nightly", "main", "master", "dev"]
                .map(String::from)
                .to_vec(),
            semver_only: false,
            newer_only: false,
        }
    }
}

/// Why the tag policy refused a reference. Each message says how to override it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyViolation {
    /// A floating tag like `latest`.
    #[error("image {image} uses the floating tag `{tag}`, whose content can change under the same name and cannot be rolled back to; use a version tag or a digest (`name@sha256:…`), or pass --allow-floating-tag")]
    FloatingTag {
        /// The reference.
        image: String,
        /// The tag.
        tag: String,
    },
    /// Not a semantic version while `semver_only` is set.
    #[error("image {image} has tag `{tag}`, which is not a semantic version (like 1.4.2) and the policy asks for one; use a version tag or a digest, or drop --semver-only")]
    NotSemver {
        /// The reference.
        image: String,
        /// The tag.
        tag: String,
    },
    /// Not newer than the running version while `newer_only` is set.
    #[error("image {image} is version {candidate}, which is not newer than the running {current}; pick a newer version, use `agentctl undo` to go back, or drop --newer-only")]
    NotNewer {
        /// The reference.
        image: String,
        /// The candidate version.
        candidate: Version,
        /// The running version.
        current: Version,
    },
}

impl TagPolicy {
    /// Checks `image` (whose version is `candidate`, if known) against the policy, given the running version.
    pub fn check(
        &self,
        image: &ImageRef,
        candidate: Option<&Version>,
        current: Option<&Version>,
    ) -> Result<(), PolicyViolation> {
        let pinned = image.digest().is_some();
        if let Some(tag) = image.effective_tag() {
            if !pinned && !self.allow_floating && self.floating_tags.iter().any(|f| f == tag) {
                return Err(PolicyViolation::FloatingTag {
                    image: image.familiar(),
                    tag: tag.to_owned(),
                });
            }
            if !pinned && self.semver_only && Version::parse(tag).is_none() {
                return Err(PolicyViolation::NotSemver {
                    image: image.familiar(),
                    tag: tag.to_owned(),
                });
            }
        }
        if self.newer_only {
            if let (Some(c), Some(cur)) = (candidate, current) {
                if c <= cur {
                    return Err(PolicyViolation::NotNewer {
                        image: image.familiar(),
                        candidate: c.clone(),
                        current: cur.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> ImageRef {
        s.parse().unwrap()
    }

    #[test]
    fn versions_from_tags_and_labels() {
        assert_eq!(Version::parse("v1.4.2").unwrap().to_string(), "1.4.2");
        assert_eq!(Version::parse("1.4").unwrap().to_string(), "1.4.0");
        assert_eq!(Version::parse("2").unwrap().to_string(), "2.0.0");
        assert_eq!(Version::parse("1.2-rc.1").unwrap().to_string(), "1.2.0-rc.1");
        assert!(Version::parse("latest").is_none());
        assert!(Version::parse("1.2.3.4").is_none());
        let labels = BTreeMap::from([(VERSION_LABEL.to_owned(), "3.1.0".to_owned())]);
        assert_eq!(
            Version::of_image(&r("a:build-7"), &labels).unwrap().to_string(),
            "3.1.0"
        );
        assert_eq!(Version::of_image(&r("a:1.0.0"), &labels).unwrap().to_string(), "1.0.0");
    }

    #[test]
    fn default_policy_refuses_floating_tags_but_not_pins() {
        let p = TagPolicy::default();
        let err = p.check(&r("acme/agent:latest"), None, None).unwrap_err();
        assert!(err.to_string().contains("--allow-floating-tag"), "{err}");
        assert!(p.check(&r("acme/agent"), None, None).is_err(), "implicit latest");
        let pinned = r(&format!("acme/agent:latest@sha256:{}", "0".repeat(64)));
        assert!(p.check(&pinned, None, None).is_ok());
        assert!(p.check(&r("acme/agent:1.2.3"), None, None).is_ok());
        let allow = TagPolicy {
            allow_floating: true,
            ..TagPolicy::default()
        };
        assert!(allow.check(&r("acme/agent:latest"), None, None).is_ok());
    }

    #[test]
    fn semver_only_and_newer_only() {
        let p = TagPolicy {
            semver_only: true,
            newer_only: true,
            ..TagPolicy::default()
        };
        assert!(matches!(
            p.check(&r("a:build-7"), None, None),
            Err(PolicyViolation::NotSemver { .. })
        ));
        let v1 = Version::parse("1.0.0").unwrap();
        let v2 = Version::parse("2.0.0").unwrap();
        assert!(p.check(&r("a:2.0.0"), Some(&v2), Some(&v1)).is_ok());
        let err = p.check(&r("a:1.0.0"), Some(&v1), Some(&v2)).unwrap_err();
        assert!(err.to_string().contains("undo"), "{err}");
    }
}
