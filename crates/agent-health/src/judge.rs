//! The canary judge, after Kayenta: for each metric, the canary's series against the baseline's over the same
//! window; a Mann-Whitney U test and the Hodges-Lehmann estimate of the shift with its confidence interval
//! classify it as pass, high or low against an effect-size tolerance, in the direction that hurts; the score
//! is the weighted share of metrics that passed, and two thresholds turn it into pass, inconclusive or fail.
//!
//! The statistics are written here (no maintained Rust crate offers the shift's interval; the normal
//! distribution comes from `statrs`): U's two-sided p-value by the normal approximation with the tie and
//! continuity corrections, as scipy's `mannwhitneyu(..., method="asymptotic")`; the shift's interval from
//! the order statistics of the m·n pairwise differences, the k-th smallest and largest with
//! k = ⌊mn/2 − z·√(mn(m+n+1)/12)⌋ + 1 (Hollander and Wolfe's large-sample interval, without a tie
//! correction).

use std::time::Duration;

use agent_core::duration_text;
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};
use time::OffsetDateTime;

use crate::prom::{AnalysisOutcome, AnalysisRun, Measurement, MeasurementPhase, MetricSource};

/// Which direction of change hurts for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Higher is worse (errors, latency).
    #[default]
    Increase,
    /// Lower is worse (throughput, successes).
    Decrease,
    /// Any change is worse.
    Either,
}

/// How one metric compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    /// No shift beyond the tolerance in the direction that hurts.
    Pass,
    /// The canary is higher than the baseline beyond the tolerance.
    High,
    /// The canary is lower than the baseline beyond the tolerance.
    Low,
    /// Too few points on either side to judge.
    Nodata,
}

/// The Mann-Whitney U test of `canary` against `baseline` and the Hodges-Lehmann shift.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MannWhitney {
    /// U of the canary sample.
    pub u: f64,
    /// The two-sided p-value (normal approximation with tie and continuity corrections).
    pub p_value: f64,
    /// The Hodges-Lehmann estimate of the shift (canary − baseline): the median of the pairwise differences.
    pub shift: f64,
    /// The lower end of the shift's confidence interval.
    pub lower: f64,
    /// The upper end.
    pub upper: f64,
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The median of `values` (NaN when empty).
pub fn median_of(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    median(&v)
}

/// Runs the test at `confidence` (0.95). Both samples must be non-empty and free of NaN.
pub fn mann_whitney(canary: &[f64], baseline: &[f64], confidence: f64) -> MannWhitney {
    let (n1, n2) = (canary.len() as f64, baseline.len() as f64);
    // Ranks of the pooled sample, ties averaged.
    let mut pooled: Vec<(f64, bool)> = canary
        .iter()
        .map(|&v| (v, true))
        .chain(baseline.iter().map(|&v| (v, false)))
        .collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = pooled.len();
    let (mut rank_sum, mut tie_term) = (0.0, 0.0);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && pooled[j + 1].0 == pooled[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += pooled[i..=j].iter().filter(|p| p.1).count() as f64 * rank;
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let u = rank_sum - n1 * (n1 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let nn = n1 + n2;
    let variance = n1 * n2 / 12.0 * ((nn + 1.0) - tie_term / (nn * (nn - 1.0)));
    let normal = Normal::standard();
    let p_value = if variance > 0.0 {
        let z = ((u - mean).abs() - 0.5) / variance.sqrt();
        (2.0 * normal.sf(z)).min(1.0)
    } else {
        1.0
    };
    // The shift: every pairwise difference, sorted; its interval from their order statistics.
    let mut diffs: Vec<f64> = Vec::with_capacity(canary.len() * baseline.len());
    for &c in canary {
        for &b in baseline {
            diffs.push(c - b);
        }
    }
    diffs.sort_by(f64::total_cmp);
    let m = diffs.len();
    let z = normal.inverse_cdf(1.0 - (1.0 - confidence) / 2.0);
    let c = (n1 * n2 / 2.0 - z * (n1 * n2 * (nn + 1.0) / 12.0).sqrt()).floor();
    // 0-based: the (k+1)-th smallest is diffs[k].
    let k = (c.max(0.0) as usize).min(m.saturating_sub(1) / 2);
    MannWhitney {
        u,
        p_value,
        shift: median(&diffs),
        lower: diffs[k],
        upper: diffs[m - 1 - k],
    }
}

/// One metric's verdict with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricVerdict {
    /// The metric's name.
    pub name: String,
    /// How it compares.
    pub classification: Classification,
    /// Points on each side.
    pub canary_points: usize,
    /// Points on the baseline's side.
    pub baseline_points: usize,
    /// The canary's median.
    pub canary_median: f64,
    /// The baseline's median.
    pub baseline_median: f64,
    /// The test, when there were enough points.
    pub test: Option<MannWhitney>,
    /// The tolerated shift either way, in the metric's units.
    pub tolerance: f64,
    /// Whether this metric alone fails the judgement when it does not pass.
    pub critical: bool,
    /// Its weight in the score.
    pub weight: f64,
    /// The verdict in words.
    pub reason: String,
}

/// How to judge one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRule {
    /// Its name.
    pub name: String,
    /// The direction that hurts.
    pub direction: Direction,
    /// The tolerated shift as a fraction of the baseline's median (0.1: ten percent).
    pub tolerance: f64,
    /// The tolerated shift in the metric's units, used when larger (for metrics whose baseline is near 0).
    pub absolute_tolerance: f64,
    /// Fails the judgement alone.
    pub critical: bool,
    /// Weight in the score.
    pub weight: f64,
    /// Fewer points than this on either side: no data.
    pub min_points: usize,
    /// Confidence of the interval (0.95).
    pub confidence: f64,
}

impl MetricRule {
    /// Classifies `canary` against `baseline` (NaN points are dropped).
    pub fn classify(&self, canary: &[f64], baseline: &[f64]) -> MetricVerdict {
        let canary: Vec<f64> = canary.iter().copied().filter(|v| v.is_finite()).collect();
        let baseline: Vec<f64> = baseline.iter().copied().filter(|v| v.is_finite()).collect();
        let (cm, bm) = (median_of(&canary), median_of(&baseline));
        let tolerance = (self.tolerance * bm.abs()).max(self.absolute_tolerance);
        let mut verdict = MetricVerdict {
            name: self.name.clone(),
            classification: Classification::Nodata,
            canary_points: canary.len(),
            baseline_points: baseline.len(),
            canary_median: cm,
            baseline_median: bm,
            test: None,
            tolerance,
            critical: self.critical,
            weight: self.weight,
            reason: String::new(),
        };
        let need = self.min_points.max(2);
        if canary.len() < need || baseline.len() < need {
            verdict.reason = format!(
                "too few points to judge: canary {}, baseline {}, at least {need} each",
                canary.len(),
                baseline.len()
            );
            return verdict;
        }
        let t = mann_whitney(&canary, &baseline, self.confidence);
        let high = matches!(self.direction, Direction::Increase | Direction::Either) && t.lower > tolerance;
        let low = matches!(self.direction, Direction::Decrease | Direction::Either) && t.upper < -tolerance;
        let interval = format!(
            "shift {:+.4} ({}% interval {:+.4} … {:+.4}, p = {:.4}), tolerance ±{:.4}",
            t.shift,
            (self.confidence * 100.0).round(),
            t.lower,
            t.upper,
            t.p_value,
            tolerance
        );
        verdict.classification = if high {
            Classification::High
        } else if low {
            Classification::Low
        } else {
            Classification::Pass
        };
        verdict.reason = match verdict.classification {
            Classification::High => format!("canary higher than baseline: median {cm:.4} vs {bm:.4}, {interval}"),
            Classification::Low => format!("canary lower than baseline: median {cm:.4} vs {bm:.4}, {interval}"),
            _ => format!("no harmful shift: median {cm:.4} vs {bm:.4}, {interval}"),
        };
        verdict.test = Some(t);
        verdict
    }
}

/// The judgement of a canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Judgement {
    /// Score at or above the pass threshold, no critical metric failed.
    Pass,
    /// Between the thresholds, or a metric without enough data: pause for a person.
    Inconclusive,
    /// Below the marginal threshold, or a critical metric failed: revert.
    Fail,
}

/// The canary's score and judgement, with every metric's evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JudgeReport {
    /// The judgement.
    pub judgement: Judgement,
    /// The weighted share of metrics that passed, 0–100.
    pub score: f64,
    /// Why, in words.
    pub reason: String,
    /// Each metric.
    pub metrics: Vec<MetricVerdict>,
}

/// Scores `metrics`: a critical metric that is high or low fails at once; a metric without data makes the
/// judgement inconclusive (never a pass); else `score >= pass` passes, `score >= marginal` is inconclusive,
/// and anything lower fails.
pub fn score(metrics: Vec<MetricVerdict>, pass: f64, marginal: f64) -> JudgeReport {
    let total: f64 = metrics.iter().map(|m| m.weight).sum();
    let passed: f64 = metrics
        .iter()
        .filter(|m| m.classification == Classification::Pass)
        .map(|m| m.weight)
        .sum();
    let score = if total > 0.0 { 100.0 * passed / total } else { 0.0 };
    let failed_critical: Vec<&str> = metrics
        .iter()
        .filter(|m| m.critical && matches!(m.classification, Classification::High | Classification::Low))
        .map(|m| m.name.as_str())
        .collect();
    let nodata: Vec<&str> = metrics
        .iter()
        .filter(|m| m.classification == Classification::Nodata)
        .map(|m| m.name.as_str())
        .collect();
    let (judgement, reason) = if !failed_critical.is_empty() {
        (
            Judgement::Fail,
            format!("critical metric {} is worse on the canary", failed_critical.join(", ")),
        )
    } else if metrics.is_empty() {
        (Judgement::Inconclusive, "no metrics to judge".to_owned())
    } else if !nodata.is_empty() {
        (
            Judgement::Inconclusive,
            format!("too few points for {}; score {score:.0}", nodata.join(", ")),
        )
    } else if score >= pass {
        (Judgement::Pass, format!("score {score:.0} ≥ pass {pass:.0}"))
    } else if score >= marginal {
        (
            Judgement::Inconclusive,
            format!("score {score:.0} is marginal (≥ {marginal:.0}, < pass {pass:.0})"),
        )
    } else {
        (Judgement::Fail, format!("score {score:.0} < marginal {marginal:.0}"))
    };
    JudgeReport {
        judgement,
        score,
        reason,
        metrics,
    }
}

/// A canary judge (Kayenta-style): each metric's range query is split by a label into the canary's series
/// and the baseline's over the same window, and compared (see [`crate::judge`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JudgeSpec {
    /// How far back the series go (the canary should have run at least this long).
    #[serde(with = "duration_text", default = "two_minutes")]
    pub window: Duration,
    /// The resolution of the series.
    #[serde(with = "duration_text", default = "crate::prom::ten_seconds")]
    pub step: Duration,
    /// The label that tells canary from baseline (`version`, HAProxy's `server`).
    pub split_by: String,
    /// Its value on the canary's series: a regular expression that must match the whole value (as PromQL's
    /// `=~`), so a plain value such as `2.0.0` selects itself and `.*-2\.0\.0` every server of a version.
    pub canary: String,
    /// Its value on the baseline's series, written the same way; a series the canary's expression matches
    /// is the canary's even when this one matches too.
    pub baseline: String,
    /// The metrics.
    pub metrics: Vec<JudgeMetric>,
    /// Fewer points on either side makes a metric "no data" (inconclusive, never a pass).
    #[serde(default = "ten")]
    pub min_points: usize,
    /// Confidence of the shift's interval.
    #[serde(default = "ninety_five_hundredths")]
    pub confidence: f64,
    /// Score (0–100) at or above which the canary passes.
    #[serde(default = "ninety_five")]
    pub pass: f64,
    /// Score at or above which (and below `pass`) the judgement is inconclusive: the rollout pauses.
    #[serde(default = "seventy_five")]
    pub marginal: f64,
}

/// One metric of a judge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JudgeMetric {
    /// Its name in the evidence.
    pub name: String,
    /// A PromQL range query whose series carry the judge's `splitBy` label.
    pub query: String,
    /// The direction that hurts: `increase` (default), `decrease` or `either`.
    #[serde(default)]
    pub direction: Direction,
    /// The tolerated shift as a fraction of the baseline's median.
    #[serde(default = "one_tenth")]
    pub tolerance: f64,
    /// The tolerated shift in the metric's units, when larger (for a baseline near 0, such as an error ratio).
    #[serde(default)]
    pub absolute_tolerance: f64,
    /// A failure of this metric fails the judgement alone.
    #[serde(default)]
    pub critical: bool,
    /// Its weight in the score.
    #[serde(default = "one")]
    pub weight: f64,
}

fn two_minutes() -> Duration {
    Duration::from_secs(120)
}
fn ten() -> usize {
    10
}
fn ninety_five_hundredths() -> f64 {
    0.95
}
fn ninety_five() -> f64 {
    95.0
}
fn seventy_five() -> f64 {
    75.0
}
fn one_tenth() -> f64 {
    0.1
}
fn one() -> f64 {
    1.0
}

impl JudgeSpec {
    /// What is wrong with the spec, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.metrics.is_empty() {
            return Err("judge needs at least one metric".into());
        }
        if self.canary == self.baseline {
            return Err(format!(
                "judge's canary and baseline are both {:?}: they must select different series",
                self.canary
            ));
        }
        for (side, value) in [("canary", &self.canary), ("baseline", &self.baseline)] {
            whole(value).map_err(|e| format!("judge's {side} {value:?} is not a regular expression: {e}"))?;
        }
        if !(0.5..1.0).contains(&self.confidence) {
            return Err(format!("judge's confidence {} must be in [0.5, 1)", self.confidence));
        }
        if !(0.0..=100.0).contains(&self.marginal) || !(self.marginal..=100.0).contains(&self.pass) {
            return Err(format!(
                "judge's thresholds need 0 ≤ marginal ({}) ≤ pass ({}) ≤ 100",
                self.marginal, self.pass
            ));
        }
        if self.step.is_zero() || self.window < self.step {
            return Err("judge's step must be above 0 and no longer than its window".into());
        }
        for m in &self.metrics {
            if m.query.trim().is_empty() || m.tolerance < 0.0 || m.absolute_tolerance < 0.0 || m.weight <= 0.0 {
                return Err(format!(
                    "judge metric {:?} needs a query, tolerances ≥ 0 and a weight > 0",
                    m.name
                ));
            }
        }
        Ok(())
    }

    /// Queries every metric and judges the canary.
    pub async fn run(&self, source: &dyn MetricSource) -> Result<JudgeReport, String> {
        let canary = whole(&self.canary).map_err(|e| format!("judge's canary: {e}"))?;
        let baseline = whole(&self.baseline).map_err(|e| format!("judge's baseline: {e}"))?;
        let mut verdicts = Vec::new();
        for m in &self.metrics {
            let series = source
                .query_range(&m.query, self.window, self.step)
                .await
                .map_err(|e| format!("metric {}: {e}", m.name))?;
            let side = |canary_side: bool| -> Vec<f64> {
                series
                    .iter()
                    .filter(|s| {
                        let Some(v) = s.labels.get(&self.split_by) else {
                            return false;
                        };
                        match canary_side {
                            true => canary.is_match(v),
                            false => !canary.is_match(v) && baseline.is_match(v),
                        }
                    })
                    .flat_map(|s| s.values.iter().copied())
                    .collect()
            };
            let rule = MetricRule {
                name: m.name.clone(),
                direction: m.direction,
                tolerance: m.tolerance,
                absolute_tolerance: m.absolute_tolerance,
                critical: m.critical,
                weight: m.weight,
                min_points: self.min_points,
                confidence: self.confidence,
            };
            verdicts.push(rule.classify(&side(true), &side(false)));
        }
        Ok(score(verdicts, self.pass, self.marginal))
    }
}

/// `pattern` as a regular expression that must match a whole label value.
fn whole(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

pub(crate) async fn run_judge(judge: &JudgeSpec, source: &dyn MetricSource) -> AnalysisRun {
    let (outcome, phase, value, message, report) = match judge.run(source).await {
        Ok(r) => {
            let (outcome, phase) = match r.judgement {
                Judgement::Pass => (AnalysisOutcome::Successful, MeasurementPhase::Successful),
                Judgement::Inconclusive => (AnalysisOutcome::Inconclusive, MeasurementPhase::Inconclusive),
                Judgement::Fail => (AnalysisOutcome::Failed, MeasurementPhase::Failed),
            };
            let detail: Vec<String> = r
                .metrics
                .iter()
                .map(|m| format!("{} {:?}: {}", m.name, m.classification, m.reason).to_lowercase())
                .collect();
            let message = format!("judge: {}; {}", r.reason, detail.join("; "));
            (outcome, phase, Some(r.score), message, Some(r))
        }
        // Prometheus unreachable or a query refused: nothing is known about the canary.
        Err(e) => (
            AnalysisOutcome::Inconclusive,
            MeasurementPhase::Inconclusive,
            None,
            format!("judge: {e}"),
            None,
        ),
    };
    AnalysisRun {
        outcome,
        measurements: vec![Measurement {
            at: OffsetDateTime::now_utc(),
            value,
            phase,
            message,
        }],
        judge: report,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The samples of `scripts/judge-reference.py`, and what it printed (scipy 1.17.1, numpy): U and p from
    /// `scipy.stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic", use_continuity=True)`;
    /// the shift and its interval from numpy (the median and order statistics of every pairwise difference).
    /// A name, the canary and baseline samples, and U, p, the shift and its interval's ends.
    type Case = (&'static str, &'static [f64], &'static [f64], [f64; 5]);

    const CASES: &[Case] = &[
        (
            "distinct",
            &[1.1, 2.3, 3.5, 4.2, 5.9, 6.1, 7.7],
            &[0.5, 0.9, 1.4, 2.0, 2.2, 3.1],
            [37.0, 0.026809130715595843, 2.8, 0.3, 5.2],
        ),
        (
            "ties",
            &[3.0, 3.0, 4.0, 5.0, 5.0, 5.0, 6.0, 7.0, 8.0, 8.0],
            &[1.0, 2.0, 3.0, 3.0, 4.0, 4.0, 5.0, 5.0, 6.0, 6.0, 6.0, 7.0],
            [77.0, 0.2702927173704395, 1.0, -1.0, 3.0],
        ),
        (
            "shifted",
            &[10.2, 11.1, 9.8, 10.9, 12.0, 11.4, 10.7, 11.9, 10.1, 11.3, 12.2, 10.8],
            &[9.1, 8.7, 9.9, 8.8, 9.4, 10.0, 9.2, 8.9, 9.6, 9.3, 9.0, 9.8],
            [141.5, 6.759868004484017e-05, 1.75, 1.1, 2.3],
        ),
    ];

    #[test]
    fn matches_scipy_and_an_independent_interval() {
        for (name, x, y, [u, p, shift, lower, upper]) in CASES {
            let t = mann_whitney(x, y, 0.95);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
            assert!(close(t.u, *u), "{name}: U {} vs {u}", t.u);
            assert!(close(t.p_value, *p), "{name}: p {} vs {p}", t.p_value);
            assert!(close(t.shift, *shift), "{name}: shift {} vs {shift}", t.shift);
            assert!(close(t.lower, *lower), "{name}: lower {} vs {lower}", t.lower);
            assert!(close(t.upper, *upper), "{name}: upper {} vs {upper}", t.upper);
        }
    }

    fn rule(direction: Direction, critical: bool) -> MetricRule {
        MetricRule {
            name: "errors".into(),
            direction,
            tolerance: 0.1,
            absolute_tolerance: 0.0,
            critical,
            weight: 1.0,
            min_points: 5,
            confidence: 0.95,
        }
    }

    #[test]
    fn the_direction_that_hurts_decides_and_too_few_points_is_no_data() {
        let (_, worse, base, _) = CASES[2];
        assert_eq!(
            rule(Direction::Increase, false).classify(worse, base).classification,
            Classification::High
        );
        assert_eq!(
            rule(Direction::Decrease, false).classify(worse, base).classification,
            Classification::Pass
        );
        assert_eq!(
            rule(Direction::Either, false).classify(worse, base).classification,
            Classification::High
        );
        // The other way round the baseline's median is near 11.0 and the interval's top near −1.1: inside a
        // 10 % tolerance, outside a 5 % one.
        assert_eq!(
            rule(Direction::Decrease, false).classify(base, worse).classification,
            Classification::Pass
        );
        let tight = MetricRule {
            tolerance: 0.05,
            ..rule(Direction::Decrease, false)
        };
        assert_eq!(tight.classify(base, worse).classification, Classification::Low);
        // A shift inside the tolerance passes: 10 % of a baseline median near 9.35 is ±0.94.
        let near: Vec<f64> = base.iter().map(|v| v + 0.3).collect();
        let v = rule(Direction::Increase, false).classify(&near, base);
        assert_eq!(v.classification, Classification::Pass, "{}", v.reason);
        let v = rule(Direction::Increase, false).classify(&worse[..3], base);
        assert_eq!(v.classification, Classification::Nodata);
        assert!(v.reason.contains("too few points"), "{}", v.reason);
        // NaN points (a series with gaps) are dropped, not compared.
        let gappy = [f64::NAN, 1.0, 1.0, 1.0, 1.0, 1.0];
        assert_eq!(
            rule(Direction::Increase, false).classify(&gappy, &gappy).canary_points,
            5
        );
    }

    #[test]
    fn the_score_gives_pass_marginal_and_fail_and_a_critical_metric_fails_alone() {
        let (_, worse, base, _) = CASES[2];
        let pass = rule(Direction::Increase, false).classify(base, base);
        let high = rule(Direction::Increase, false).classify(worse, base);
        let critical_high = rule(Direction::Increase, true).classify(worse, base);
        let nodata = rule(Direction::Increase, false).classify(&worse[..2], base);
        let four = |last: MetricVerdict| vec![pass.clone(), pass.clone(), pass.clone(), last];
        assert_eq!(score(four(pass.clone()), 95.0, 75.0).judgement, Judgement::Pass);
        let r = score(four(high.clone()), 95.0, 75.0);
        assert_eq!((r.judgement, r.score), (Judgement::Inconclusive, 75.0), "{}", r.reason);
        let r = score(vec![pass.clone(), high.clone()], 95.0, 75.0);
        assert_eq!((r.judgement, r.score), (Judgement::Fail, 50.0));
        let r = score(four(critical_high), 95.0, 75.0);
        assert_eq!(r.judgement, Judgement::Fail);
        assert!(r.reason.contains("critical metric errors"), "{}", r.reason);
        let r = score(four(nodata), 95.0, 0.0);
        assert_eq!(
            r.judgement,
            Judgement::Inconclusive,
            "too few points is never a pass: {}",
            r.reason
        );
        assert_eq!(score(Vec::new(), 95.0, 75.0).judgement, Judgement::Inconclusive);
    }
}

#[cfg(test)]
mod spec_tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use crate::{AnalysisOutcome, AnalysisSpec, JudgeSpec, MetricSource, Series};

    /// Range series by query: `version` 1.0.0 and 2.0.0, as a Prometheus would return them.
    struct Source(Vec<(&'static str, &'static str, Vec<f64>)>);

    #[async_trait::async_trait]
    impl MetricSource for Source {
        async fn query(&self, _: &str) -> Result<Option<f64>, String> {
            Ok(None)
        }

        async fn query_range(&self, query: &str, _: Duration, _: Duration) -> Result<Vec<Series>, String> {
            if query == "down" {
                return Err("prometheus http://127.0.0.1:1: connection refused".into());
            }
            Ok(self
                .0
                .iter()
                .filter(|(q, _, _)| *q == query)
                .map(|(_, version, values)| Series {
                    labels: BTreeMap::from([("version".to_owned(), (*version).to_owned())]),
                    values: values.clone(),
                })
                .collect())
        }
    }

    fn spec(metrics: &str) -> AnalysisSpec {
        let yaml = format!(
            "prometheus: http://prometheus:9090\njudge:\n  splitBy: version\n  canary: '2.0.0'\n  baseline: '1.0.0'\n  step: 1s\n  window: 30s\n  minPoints: 5\n  metrics: {metrics}\n"
        );
        let spec: AnalysisSpec = serde_saphyr::from_str(&yaml).unwrap();
        spec.judge.as_ref().unwrap().check().unwrap();
        spec
    }

    #[tokio::test]
    async fn a_judge_passes_a_canary_like_its_baseline_and_fails_a_worse_one_with_evidence() {
        let same = vec![0.01, 0.012, 0.011, 0.009, 0.01, 0.013, 0.01];
        let worse = vec![0.2, 0.22, 0.19, 0.21, 0.2, 0.25, 0.18];
        let source = Source(vec![
            ("errors", "1.0.0", same.clone()),
            ("errors-bad", "1.0.0", same.clone()),
            ("errors-bad", "2.0.0", worse),
            ("errors", "2.0.0", same.clone()),
            ("short", "1.0.0", same.clone()),
            ("short", "2.0.0", vec![0.01, 0.01]),
        ]);
        let m = |q: &str| format!("[{{name: {q}, query: {q}, absoluteTolerance: 0.005, critical: true}}]");
        let run = spec(&m("errors")).run(&source).await;
        assert_eq!(run.outcome, AnalysisOutcome::Successful, "{:?}", run.measurements);
        let run = spec(&m("errors-bad")).run(&source).await;
        assert_eq!(run.outcome, AnalysisOutcome::Failed);
        let report = run.judge.unwrap();
        let metric = &report.metrics[0];
        assert_eq!((metric.canary_points, metric.baseline_points), (7, 7));
        assert!(
            metric.canary_median > 0.19 && metric.baseline_median < 0.02,
            "{metric:?}"
        );
        assert!(
            run.measurements[0].message.contains("critical metric errors-bad"),
            "{}",
            run.measurements[0].message
        );
        // Too few canary points, or Prometheus down: inconclusive (the rollout pauses), never a pass.
        assert_eq!(
            spec(&m("short")).run(&source).await.outcome,
            AnalysisOutcome::Inconclusive
        );
        let run = spec(&m("down")).run(&source).await;
        assert_eq!(run.outcome, AnalysisOutcome::Inconclusive);
        assert!(run.measurements[0].message.contains("connection refused"));
    }

    #[test]
    fn bad_judges_are_refused_with_the_reason() {
        let parse = |extra: &str| -> Result<(), String> {
            let yaml = format!("splitBy: version\ncanary: a\nbaseline: b\nmetrics: [{{name: m, query: q}}]\n{extra}");
            serde_saphyr::from_str::<JudgeSpec>(&yaml)
                .map_err(|e| e.to_string())?
                .check()
        };
        assert!(parse("").is_ok());
        assert!(parse("pass: 50\nmarginal: 80\n").unwrap_err().contains("marginal"));
        assert!(parse("confidence: 1.5\n").unwrap_err().contains("confidence"));
        assert!(parse("colour: red\n").unwrap_err().contains("colour"));
        let same = "splitBy: v\ncanary: a\nbaseline: a\nmetrics: [{name: m, query: q}]\n";
        let err = serde_saphyr::from_str::<JudgeSpec>(same).unwrap().check().unwrap_err();
        assert!(err.contains("both \"a\""), "{err}");
        let bad = "splitBy: v\ncanary: 'a('\nbaseline: b\nmetrics: [{name: m, query: q}]\n";
        let err = serde_saphyr::from_str::<JudgeSpec>(bad).unwrap().check().unwrap_err();
        assert!(err.contains("canary \"a(\" is not a regular expression"), "{err}");
    }

    #[tokio::test]
    async fn canary_and_baseline_select_whole_values_and_the_canary_wins_an_overlap() {
        // Servers as a traffic rollout names them: the canary's end in its version; the baseline is the rest.
        let source = Source(vec![
            ("e", "a1", vec![0.0; 6]),
            ("e", "a1-2.0.0", vec![0.5; 6]),
            ("e", "a2-2.0.0", vec![0.5; 6]),
            ("e", "a1-2.0.00", vec![9.0; 6]),
        ]);
        let yaml =
            "splitBy: version\ncanary: '.*-2\\.0\\.0'\nbaseline: '.*'\nminPoints: 5\nmetrics: [{name: e, query: e}]\n";
        let judge: JudgeSpec = serde_saphyr::from_str(yaml).unwrap();
        judge.check().unwrap();
        let report = judge.run(&source).await.unwrap();
        let m = &report.metrics[0];
        assert_eq!((m.canary_points, m.baseline_points), (12, 12), "{m:?}");
        assert_eq!((m.canary_median, m.baseline_median), (0.5, 4.5), "{m:?}");
    }
}
