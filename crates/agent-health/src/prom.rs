//! Prometheus: our own text-format parser, a PromQL instant-query client, success/failure conditions, and
//! analysis runs in the manner of Argo Rollouts' AnalysisTemplate.

use std::fmt;
use std::time::Duration;

use agent_core::duration_text;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::gate::{Observation, Probe, ProbeContext};
use crate::http;

/// One sample of the text exposition format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    /// Value (NaN and ±Inf allowed).
    pub value: f64,
    /// Timestamp in milliseconds, when given.
    pub timestamp: Option<i64>,
}

impl Sample {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A parse error with its line number (from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics text line {line}: {message}")]
pub struct ParseError {
    /// Line number, from 1.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Parses the Prometheus text exposition format (0.0.4). Comment lines are skipped.
pub fn parse_text(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|message| ParseError { line: i + 1, message })?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let mut chars = line.char_indices().peekable();
    let name_end = match chars.peek() {
        Some((_, c)) if is_name_start(*c) => {
            let mut end = 0;
            while let Some(&(i, c)) = chars.peek() {
                if is_name_char(c) {
                    end = i + c.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            end
        }
        _ => return Err("a sample must start with a metric name".into()),
    };
    let name = line[..name_end].to_owned();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remaining) = parse_labels(after)?;
        labels = parsed;
        rest = remaining;
    }
    let mut parts = rest.split_whitespace();
    let value_text = parts.next().ok_or_else(|| format!("metric {name} has no value"))?;
    let value = parse_value(value_text).ok_or_else(|| format!("metric {name}: {value_text:?} is not a number"))?;
    let timestamp = match parts.next() {
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| format!("metric {name}: timestamp {t:?} is not an integer"))?,
        ),
        None => None,
    };
    if let Some(extra) = parts.next() {
        return Err(format!("metric {name}: unexpected {extra:?} after the timestamp"));
    }
    Ok(Sample {
        name,
        labels,
        value,
        timestamp,
    })
}

type Labels = Vec<(String, String)>;

fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = s.trim_start();
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let end = rest
            .char_indices()
            .find(|(_, c)| !is_name_char(*c))
            .map(|(i, _)| i)
            .ok_or("unterminated label set")?;
        if end == 0 {
            return Err(format!(
                "expected a label name at {:?}",
                rest.chars().take(10).collect::<String>()
            ));
        }
        let key = rest[..end].to_owned();
        rest = rest[end..].trim_start();
        rest = rest
            .strip_prefix('=')
            .ok_or_else(|| format!("label {key}: expected '='"))?
            .trim_start();
        rest = rest
            .strip_prefix('"')
            .ok_or_else(|| format!("label {key}: the value must be in double quotes"))?;
        let mut value = String::new();
        let mut it = rest.char_indices();
        let close = loop {
            match it.next() {
                None => return Err(format!("label {key}: unterminated value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match it.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err(format!("label {key}: unterminated escape")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key, value));
        rest = rest[close + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// A comparison over a measurement, written `result < 0.05`, `result >= 1 && result < 10`, `result == 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    text: String,
    any: Vec<Vec<(Op, f64)>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Condition {
    /// Parses a condition. `||` separates alternatives, `&&` joins comparisons.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let bad = |why: &str| {
            format!("invalid condition {text:?}: {why}; write e.g. `result < 0.05` or `result >= 1 && result <= 5`")
        };
        let mut any = Vec::new();
        for alt in text.split("||") {
            let mut all = Vec::new();
            for cmp in alt.split("&&") {
                let cmp = cmp.trim();
                let rest = cmp
                    .strip_prefix("result")
                    .ok_or_else(|| bad("each comparison starts with `result`"))?
                    .trim_start();
                let (op, num) = [
                    ("<=", Op::Le),
                    (">=", Op::Ge),
                    ("==", Op::Eq),
                    ("!=", Op::Ne),
                    ("<", Op::Lt),
                    (">", Op::Gt),
                ]
                .iter()
                .find_map(|(s, op)| rest.strip_prefix(s).map(|n| (*op, n.trim())))
                .ok_or_else(|| bad("expected <, <=, >, >=, == or != after `result`"))?;
                let n: f64 = num.parse().map_err(|_| bad(&format!("{num:?} is not a number")))?;
                all.push((op, n));
            }
            any.push(all);
        }
        Ok(Condition {
            text: text.to_owned(),
            any,
        })
    }

    /// Whether `value` satisfies the condition.
    pub fn holds(&self, value: f64) -> bool {
        self.any.iter().any(|all| {
            all.iter().all(|(op, n)| match op {
                Op::Lt => value < *n,
                Op::Le => value <= *n,
                Op::Gt => value > *n,
                Op::Ge => value >= *n,
                Op::Eq => value == *n,
                Op::Ne => value != *n,
            })
        })
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Condition::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// One series of a range query: its labels and its points' values, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its values.
    pub values: Vec<f64>,
}

/// Where analyses get numbers.
#[async_trait]
pub trait MetricSource: Send + Sync {
    /// The first value of `query`'s result; `Ok(None)` when the result is empty (no data).
    async fn query(&self, query: &str) -> Result<Option<f64>, String>;

    /// Every series of `query` evaluated every `step` over the last `window`. The default says the source
    /// has no range queries.
    async fn query_range(&self, query: &str, window: Duration, step: Duration) -> Result<Vec<Series>, String> {
        let _ = (window, step);
        Err(format!("this metric source cannot run the range query {query:?}"))
    }
}

/// A Prometheus server's HTTP API (instant queries).
#[derive(Debug, Clone)]
pub struct Prometheus {
    url: String,
}

impl Prometheus {
    /// The server at `url` (`http://127.0.0.1:9090`).
    pub fn new(url: &str) -> Prometheus {
        Prometheus {
            url: url.trim_end_matches('/').to_owned(),
        }
    }

    /// GETs an API `url` for `query` and returns its JSON answer when Prometheus says `success`.
    async fn api(&self, url: &str, query: &str, timeout: Duration) -> Result<serde_json::Value, String> {
        let resp = http::get(url, timeout)
            .await
            .map_err(|e| format!("prometheus {}: {e}", self.url))?;
        let v: serde_json::Value = serde_json::from_str(&resp.body).map_err(|e| {
            format!(
                "prometheus {} answered {} with unreadable JSON: {e}",
                self.url, resp.status
            )
        })?;
        if v["status"] != "success" {
            return Err(format!(
                "prometheus {} rejected {query:?}: {}",
                self.url,
                v["error"].as_str().unwrap_or("unknown error")
            ));
        }
        Ok(v)
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[async_trait]
impl MetricSource for Prometheus {
    async fn query(&self, query: &str) -> Result<Option<f64>, String> {
        let url = format!("{}/api/v1/query?query={}", self.url, percent_encode(query));
        let v = self.api(&url, query, Duration::from_secs(5)).await?;
        let value_of = |pair: &serde_json::Value| pair.get(1).and_then(|s| s.as_str()).and_then(parse_value);
        let data = &v["data"];
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .and_then(|r| r.first())
                .and_then(|s| value_of(&s["value"]))),
            Some("scalar") => Ok(value_of(&data["result"])),
            other => Err(format!(
                "prometheus query {query:?} returned a {other:?}; use an instant vector or scalar query"
            )),
        }
    }

    async fn query_range(&self, query: &str, window: Duration, step: Duration) -> Result<Vec<Series>, String> {
        let end = OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9;
        let start = end - window.as_secs_f64();
        let url = format!(
            "{}/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={}",
            self.url,
            percent_encode(query),
            step.as_secs_f64().max(0.001)
        );
        let v = self.api(&url, query, Duration::from_secs(10)).await?;
        if v["data"]["resultType"] != "matrix" {
            return Err(format!("prometheus range query {query:?} did not return a matrix"));
        }
        Ok(v["data"]["result"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|s| Series {
                labels: s["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                values: s["values"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|p| p.get(1).and_then(|v| v.as_str()).and_then(parse_value))
                    .collect(),
            })
            .collect())
    }
}

/// An analysis, as in Argo Rollouts: a query measured `count` times every `interval`; or, with `judge`, the
/// canary compared with the baseline over the same window (see [`JudgeSpec`](crate::judge::JudgeSpec)).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// The Prometheus URL.
    pub prometheus: String,
    /// The PromQL query (not used by a judge).
    #[serde(default)]
    pub query: String,
    /// Judge the canary against the baseline instead of measuring one query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<crate::judge::JudgeSpec>,
    /// A measurement succeeds when this holds.
    #[serde(default)]
    pub success_condition: Option<Condition>,
    /// A measurement fails when this holds (checked first).
    #[serde(default)]
    pub failure_condition: Option<Condition>,
    /// Time between measurements.
    #[serde(with = "duration_text", default = "ten_seconds")]
    pub interval: Duration,
    /// Measurements to take.
    #[serde(default = "three")]
    pub count: u32,
    /// Failed measurements tolerated; one more fails the analysis.
    #[serde(default)]
    pub failure_limit: u32,
    /// Inconclusive measurements (no data, Prometheus unreachable) tolerated; one more makes it inconclusive.
    #[serde(default)]
    pub inconclusive_limit: u32,
}

pub(crate) fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

fn three() -> u32 {
    3
}

/// How one measurement went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeasurementPhase {
    /// The success condition held (and the failure condition did not).
    Successful,
    /// The failure condition held, or the success condition did not.
    Failed,
    /// No data, or the source could not be asked.
    Inconclusive,
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// When it was taken.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The value, when there was one.
    pub value: Option<f64>,
    /// Its phase.
    pub phase: MeasurementPhase,
    /// Why, in words.
    pub message: String,
}

/// The outcome of an analysis run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnalysisOutcome {
    /// Within the failure and inconclusive limits.
    Successful,
    /// More failed measurements than the failure limit.
    Failed,
    /// More inconclusive measurements than allowed: pause, do not roll back.
    Inconclusive,
}

/// An analysis run with its measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRun {
    /// The outcome.
    pub outcome: AnalysisOutcome,
    /// Every measurement (a judge's: one, its score and reason).
    pub measurements: Vec<Measurement>,
    /// A judge's report: every metric's medians, interval and classification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<crate::judge::JudgeReport>,
}

impl AnalysisSpec {
    /// Judges one value.
    pub fn judge(&self, value: Option<f64>) -> (MeasurementPhase, String) {
        let Some(v) = value else {
            return (MeasurementPhase::Inconclusive, "the query returned no data".into());
        };
        if let Some(f) = &self.failure_condition {
            if f.holds(v) {
                return (
                    MeasurementPhase::Failed,
                    format!("{v} meets the failure condition `{f}`"),
                );
            }
        }
        match &self.success_condition {
            Some(s) if s.holds(v) => (MeasurementPhase::Successful, format!("{v} meets `{s}`")),
            Some(s) => (MeasurementPhase::Failed, format!("{v} does not meet `{s}`")),
            None => (MeasurementPhase::Successful, format!("{v} (no success condition)")),
        }
    }

    /// Takes the measurements (stopping early once the outcome is decided), or runs the judge.
    pub async fn run(&self, source: &dyn MetricSource) -> AnalysisRun {
        if let Some(judge) = &self.judge {
            return crate::judge::run_judge(judge, source).await;
        }
        let mut measurements = Vec::new();
        let (mut failed, mut inconclusive) = (0, 0);
        for i in 0..self.count.max(1) {
            if i > 0 {
                tokio::time::sleep(self.interval).await;
            }
            let (value, (phase, message)) = match source.query(&self.query).await {
                Ok(v) => (v, self.judge(v)),
                Err(e) => (None, (MeasurementPhase::Inconclusive, e)),
            };
            match phase {
                MeasurementPhase::Failed => failed += 1,
                MeasurementPhase::Inconclusive => inconclusive += 1,
                MeasurementPhase::Successful => {}
            }
            measurements.push(Measurement {
                at: OffsetDateTime::now_utc(),
                value,
                phase,
                message,
            });
            if failed > self.failure_limit {
                return AnalysisRun {
                    outcome: AnalysisOutcome::Failed,
                    measurements,
                    judge: None,
                };
            }
            if inconclusive > self.inconclusive_limit {
                return AnalysisRun {
                    outcome: AnalysisOutcome::Inconclusive,
                    measurements,
                    judge: None,
                };
            }
        }
        AnalysisRun {
            outcome: AnalysisOutcome::Successful,
            measurements,
            judge: None,
        }
    }
}

/// A probe that asks Prometheus each period: pass when the condition holds, fail when not, inconclusive
/// when Prometheus is down or has no data.
pub struct PromQueryProbe {
    name: String,
    source: std::sync::Arc<dyn MetricSource>,
    query: String,
    condition: Condition,
}

impl fmt::Debug for PromQueryProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromQueryProbe")
            .field("query", &self.query)
            .field("condition", &self.condition)
            .finish()
    }
}

impl PromQueryProbe {
    /// A probe named `name`.
    pub fn new(
        name: &str,
        source: std::sync::Arc<dyn MetricSource>,
        query: &str,
        condition: Condition,
    ) -> PromQueryProbe {
        PromQueryProbe {
            name: name.to_owned(),
            source,
            query: query.to_owned(),
            condition,
        }
    }
}

#[async_trait]
impl Probe for PromQueryProbe {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self, _ctx: &ProbeContext) -> Observation {
        match self.source.query(&self.query).await {
            Err(e) => Observation::Inconclusive(e),
            Ok(None) => Observation::Inconclusive(format!("{} returned no data", self.query)),
            Ok(Some(v)) if self.condition.holds(v) => {
                Observation::Pass(format!("{} = {v} ({})", self.query, self.condition))
            }
            Ok(Some(v)) => Observation::Fail(format!("{} = {v}, which fails `{}`", self.query, self.condition)),
        }
    }
}

/// A probe that scrapes the container's own `/metrics` and checks one sample: pass when `metric` (a name,
/// optionally with `{label="value",…}` matchers) meets the condition.
#[derive(Debug, Clone)]
pub struct ScrapeProbe {
    port: u16,
    path: String,
    name: String,
    matchers: Vec<(String, String)>,
    condition: Condition,
}

impl ScrapeProbe {
    /// A probe of `selector` (`agent_up` or `agent_requests_total{code="500"}`) on `port`/`path`.
    pub fn new(port: u16, path: &str, selector: &str, condition: Condition) -> Result<ScrapeProbe, String> {
        let sample =
            parse_line(&format!("{selector} 0")).map_err(|e| format!("invalid metric selector {selector:?}: {e}"))?;
        Ok(ScrapeProbe {
            port,
            path: path.to_owned(),
            name: sample.name,
            matchers: sample.labels,
            condition,
        })
    }
}

#[async_trait]
impl Probe for ScrapeProbe {
    fn name(&self) -> &str {
        "metrics"
    }

    async fn check(&self, ctx: &ProbeContext) -> Observation {
        crate::probes::inspected(self, ctx).await
    }

    fn reads_inspection(&self) -> bool {
        true
    }

    async fn check_inspected(&self, _ctx: &ProbeContext, info: &agent_core::ContainerInfo) -> Observation {
        let Some(ip) = info.addresses.values().next() else {
            return Observation::Pending("the container has no address yet".into());
        };
        let url = format!("http://{ip}:{}{}", self.port, self.path);
        let resp = match http::get(&url, Duration::from_secs(3)).await {
            Ok(r) => r,
            Err(e) => return Observation::Fail(format!("scraping {url}: {e}")),
        };
        let samples = match parse_text(&resp.body) {
            Ok(s) => s,
            Err(e) => return Observation::Fail(format!("scraping {url}: {e}")),
        };
        let found = samples
            .iter()
            .find(|s| s.name == self.name && self.matchers.iter().all(|(k, v)| s.label(k) == Some(v.as_str())));
        match found {
            None => Observation::Pending(format!("{} not exported yet", self.name)),
            Some(s) if self.condition.holds(s.value) => {
                Observation::Pass(format!("{} = {} ({})", self.name, s.value, self.condition))
            }
            Some(s) => Observation::Fail(format!("{} = {}, which fails `{}`", self.name, s.value, self.condition)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_format() {
        let text =
            "# HELP x y\n# TYPE x counter\nx 1\nhttp_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n\
                    weird{path=\"/a,b\",q=\"say \\\"hi\\\"\",nl=\"a\\nb\",bs=\"c:\\\\d\"} -Inf\nnan_metric NaN\n";
        let s = parse_text(text).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[1].label("code"), Some("200"));
        assert_eq!(s[1].timestamp, Some(1395066363000));
        assert_eq!(s[2].label("path"), Some("/a,b"));
        assert_eq!(s[2].label("q"), Some("say \"hi\""));
        assert_eq!(s[2].label("nl"), Some("a\nb"));
        assert_eq!(s[2].label("bs"), Some("c:\\d"));
        assert_eq!(s[2].value, f64::NEG_INFINITY);
        assert!(s[3].value.is_nan());
        let err = parse_text("ok 1\nbad{a=b} 1\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(parse_text("x{a=\"1\"").is_err());
        assert!(parse_text("x one").is_err());
    }

    #[test]
    fn conditions() {
        let c = Condition::parse("result < 0.05").unwrap();
        assert!(c.holds(0.01) && !c.holds(0.05));
        let r = Condition::parse("result >= 1 && result <= 5 || result == 0").unwrap();
        assert!(r.holds(0.0) && r.holds(3.0) && !r.holds(6.0));
        assert!(Condition::parse("value < 1")
            .unwrap_err()
            .contains("starts with `result`"));
        assert!(Condition::parse("result ~ 1").is_err());
        assert!(Condition::parse("result < x").is_err());
    }

    fn label_value() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 ,={}\"\\\\\n/:._-]{0,20}"
    }

    proptest! {
        #[test]
        fn label_values_round_trip(values in prop::collection::vec(label_value(), 1..5), v in -1e12f64..1e12) {
            let labels: Vec<(String, String)> = values.iter().enumerate().map(|(i, v)| (format!("l{i}"), v.clone())).collect();
            let body = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", crate::control_center::escape_label(v))).collect::<Vec<_>>().join(",");
            let line = format!("m{{{body}}} {v}");
            let parsed = parse_text(&line).unwrap();
            prop_assert_eq!(&parsed[0].labels, &labels);
            prop_assert_eq!(parsed[0].value, v);
        }

        #[test]
        fn never_panics(text in "\\PC{0,200}") {
            let _ = parse_text(&text);
        }
    }

    struct Fixed(Vec<Result<Option<f64>, String>>, std::sync::Mutex<usize>);

    #[async_trait]
    impl MetricSource for Fixed {
        async fn query(&self, _: &str) -> Result<Option<f64>, String> {
            let mut i = self.1.lock().unwrap();
            let r = self.0[(*i).min(self.0.len() - 1)].clone();
            *i += 1;
            r
        }
    }

    fn spec(limit: u32) -> AnalysisSpec {
        AnalysisSpec {
            prometheus: String::new(),
            query: "q".into(),
            judge: None,
            success_condition: Some(Condition::parse("result < 0.05").unwrap()),
            failure_condition: None,
            interval: Duration::from_secs(1),
            count: 3,
            failure_limit: limit,
            inconclusive_limit: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn analysis_outcomes() {
        let ok = Fixed(vec![Ok(Some(0.01))], Default::default());
        assert_eq!(spec(0).run(&ok).await.outcome, AnalysisOutcome::Successful);
        let one_bad = Fixed(vec![Ok(Some(0.5)), Ok(Some(0.01))], Default::default());
        assert_eq!(
            spec(1).run(&one_bad).await.outcome,
            AnalysisOutcome::Successful,
            "within the failure limit"
        );
        let one_bad = Fixed(vec![Ok(Some(0.5)), Ok(Some(0.01))], Default::default());
        let run = spec(0).run(&one_bad).await;
        assert_eq!((run.outcome, run.measurements.len()), (AnalysisOutcome::Failed, 1));
        let down = Fixed(vec![Err("connection refused".into())], Default::default());
        assert_eq!(
            spec(0).run(&down).await.outcome,
            AnalysisOutcome::Inconclusive,
            "a down Prometheus never fails"
        );
        let empty = Fixed(vec![Ok(None)], Default::default());
        assert_eq!(spec(5).run(&empty).await.outcome, AnalysisOutcome::Inconclusive);
    }
}
