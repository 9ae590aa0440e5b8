//! Durations written the way operators write them (`500ms`, `10s`, `2m`, `1h30m`), for specs and output.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// The longest duration agentctl takes anywhere (a pause, a deadline, a timeout, a window): 365 days. Every
/// duration is bounded where it is parsed, so that no later arithmetic on times and instants (a pause's end,
/// a lease's expiry) can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Parses `500ms`, `10s`, `2m`, `1h30m` and the like, at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration {text:?}: {e}; write a number with a unit, like 500ms, 10s, 2m or 1h")
    })?;
    bounded(d).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// `d` when it is at most [`MAX_DURATION`], else why not.
pub fn bounded(d: Duration) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err(format!(
            "{} is longer than the longest duration agentctl takes (365d); write a shorter one",
            format_duration(d)
        ));
    }
    Ok(d)
}

/// `secs` seconds as a duration, at most [`MAX_DURATION`].
pub fn bounded_secs(secs: u64) -> Result<Duration, String> {
    bounded(Duration::from_secs(secs)).map_err(|e| format!("invalid duration of {secs} seconds: {e}"))
}

/// Formats a duration compactly (`1m 30s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    // Round to milliseconds: sub-millisecond detail only adds noise for operators.
    let ms = Duration::from_millis(d.as_millis().min(u64::MAX as u128) as u64);
    if ms.is_zero() {
        return "0s".to_owned();
    }
    humantime::format_duration(ms).to_string()
}

/// Serde helpers for a [`Duration`] field written as text.
pub mod serde_text {
    use super::*;

    /// Serializes as `10s`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    /// Deserializes from `10s` (or a number of seconds).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
            Raw::Seconds(s) => bounded_secs(s).map_err(serde::de::Error::custom),
        }
    }
}

/// Serde helpers for an `Option<Duration>` field written as text.
pub mod serde_text_opt {
    use super::*;

    /// Serializes as `10s` or null.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Deserializes from `10s`, a number of seconds, or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::serde_text")] Duration);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(format_duration(Duration::from_secs(90)), "1m 30s");
        assert_eq!(format_duration(Duration::from_nanos(10)), "0s");
        let err = parse_duration("ten").unwrap_err();
        assert!(err.contains("\"ten\"") && err.contains("10s"), "{err}");
    }

    #[test]
    fn durations_are_bounded_where_they_are_parsed() {
        assert_eq!(parse_duration("365d").unwrap(), MAX_DURATION);
        for text in ["366d", "99999999h", "18446744073709551615s"] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains(text) && err.contains("365d"), "{text}: {err}");
        }
        assert!(bounded_secs(u64::MAX).is_err());
        #[derive(Debug, serde::Deserialize)]
        struct S {
            #[allow(dead_code)]
            #[serde(with = "serde_text")]
            d: Duration,
        }
        assert!(serde_json::from_str::<S>(r#"{"d": 18446744073709551615}"#).is_err());
        assert!(serde_json::from_str::<S>(r#"{"d": "1000000h"}"#).is_err());
    }
}
