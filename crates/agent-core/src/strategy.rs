//! Rollout strategies (a closed set) and the pure planner that turns targets + strategy into a [`RolloutPlan`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::{format_duration, parse_duration, serde_text};
use crate::spec::ContainerName;

/// One container on one engine: the unit a rollout updates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Target {
    /// The engine endpoint (`unix:///var/run/docker.sock`, `tcp://10.0.0.5:2376`).
    pub host: String,
    /// The container's name on that engine.
    pub container: ContainerName,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.container, self.host)
    }
}

/// A number of targets, absolute or as a percentage of all targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// This many targets.
    Absolute(u32),
    /// This percentage of the targets (0–100), rounded down but at least one when positive.
    Percent(u8),
}

impl Count {
    /// The count for `total` targets.
    pub fn of(self, total: usize) -> usize {
        match self {
            Count::Absolute(n) => n as usize,
            Count::Percent(p) => {
                let n = total * p as usize / 100;
                if p > 0 {
                    n.max(1)
                } else {
                    0
                }
            }
        }
    }
}

impl FromStr for Count {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid count {s:?}: write a number of targets (2) or a percentage (25%)");
        match s.strip_suffix('%') {
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= 100 => Ok(Count::Percent(p)),
                _ => Err(bad()),
            },
            None => s.trim().parse().map(Count::Absolute).map_err(|_| bad()),
        }
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::Absolute(n) => write!(f, "{n}"),
            Count::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Count {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Count::Absolute(n) => s.serialize_u32(*n),
            Count::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Count::Absolute(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// How long a canary pause lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// A fixed time.
    For(Duration),
    /// Until `agentctl rollout promote`.
    UntilPromoted,
}

impl Serialize for Pause {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Pause::For(d) => s.serialize_str(&format_duration(*d)),
            Pause::UntilPromoted => {
                use serde::ser::SerializeMap;
                s.serialize_map(Some(0))?.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Pause {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(u64),
            Object(std::collections::BTreeMap<String, serde_json::Value>),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => parse_duration(&t).map(Pause::For).map_err(serde::de::Error::custom),
            Raw::Seconds(n) => crate::duration::bounded_secs(n)
                .map(Pause::For)
                .map_err(serde::de::Error::custom),
            Raw::Object(m) => match m.get("duration") {
                None => Ok(Pause::UntilPromoted),
                Some(serde_json::Value::String(t)) => {
                    parse_duration(t).map(Pause::For).map_err(serde::de::Error::custom)
                }
                Some(other) => Err(serde::de::Error::custom(format!(
                    "invalid pause duration {other}: write `pause: 30s`, or `pause: {{}}` to wait for promotion"
                ))),
            },
        }
    }
}

/// One canary step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CanaryStep {
    /// Update targets until this percentage (0–100) of them runs the new revision.
    SetWeight(u8),
    /// Wait.
    Pause(Pause),
    /// Run the named analysis; failure aborts, inconclusive pauses.
    Analysis(String),
}

fn default_max_unavailable() -> Count {
    Count::Absolute(1)
}

fn zero_count() -> Count {
    Count::Absolute(0)
}

/// How a rollout replaces the targets. A closed set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Strategy {
    /// Every target at once, each with the safe in-place update.
    Recreate {},
    /// Batches of targets.
    #[serde(rename_all = "camelCase")]
    Rolling {
        /// Targets down at once (stop-first).
        #[serde(default = "default_max_unavailable")]
        max_unavailable: Count,
        /// Extra instances at once (start-first, for agents that can run twice).
        #[serde(default = "zero_count")]
        max_surge: Count,
        /// Wait between batches.
        #[serde(default, with = "serde_text")]
        batch_delay: Duration,
    },
    /// New containers beside the old ones, then a switch.
    #[serde(rename_all = "camelCase")]
    BlueGreen {
        /// Promote as soon as the preview is verified.
        #[serde(default)]
        auto_promote: bool,
        /// A window after promotion during which the rollout still runs, so an abort reverts every target
        /// to its old container (kept stopped and retained, as after any update, within the history limit).
        #[serde(default, with = "serde_text")]
        scale_down_delay: Duration,
    },
    /// Gradual weights with pauses and analysis.
    Canary {
        /// The steps.
        steps: Vec<CanaryStep>,
    },
}

impl Strategy {
    /// The strategy's name as written in specs.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Recreate {} => "recreate",
            Strategy::Rolling { .. } => "rolling",
            Strategy::BlueGreen { .. } => "blueGreen",
            Strategy::Canary { .. } => "canary",
        }
    }
}

/// How a batch replaces each of its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateMode {
    /// Stop the old container, then start the new one (a short gap, never two instances).
    StopFirst,
    /// Start the new one beside the old one, verify, then stop the old one (no gap, briefly two).
    StartFirst,
    /// Start a preview beside the old one and switch on promotion.
    BlueGreen,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum PlanStep {
    /// Update these targets (indices into the plan's targets), verify each.
    Update {
        /// Batch number, from 1.
        batch: usize,
        /// Indices of the targets.
        targets: Vec<usize>,
        /// How each is replaced.
        mode: UpdateMode,
        /// The weight reached after this batch (percentage of targets updated).
        weight: u8,
    },
    /// Wait.
    Pause {
        /// How long.
        pause: Pause,
    },
    /// Run an analysis.
    Analysis {
        /// The analysis name.
        name: String,
    },
    /// Blue-green: switch every preview to live (automatically, or on promotion).
    Promote {
        /// Without waiting for `rollout promote`.
        automatic: bool,
        /// The window after promotion (a timed pause step follows when it is not zero).
        #[serde(with = "serde_text")]
        scale_down_delay: Duration,
    },
    /// Traffic through a load balancer: this share (0–100 %) of the requests goes to the staged new
    /// versions, the rest to the old ones, which keep running.
    Traffic {
        /// The new versions' share of the traffic, in percent.
        weight: u8,
    },
}

impl fmt::Display for PlanStep {
    /// The step as progress lines and the web view show it: `batch 2: update 5 target(s), reaching 50 %`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanStep::Update {
                batch, targets, weight, ..
            } => write!(
                f,
                "batch {batch}: update {} target(s), reaching {weight} %",
                targets.len()
            ),
            PlanStep::Pause { pause: Pause::For(d) } => write!(f, "pause {}", format_duration(*d)),
            PlanStep::Pause {
                pause: Pause::UntilPromoted,
            } => f.write_str("pause until promoted"),
            PlanStep::Analysis { name } => write!(f, "analysis {name}"),
            PlanStep::Promote { .. } => f.write_str("promote"),
            PlanStep::Traffic { weight } => write!(f, "send {weight} % of the traffic to the new version"),
        }
    }
}

/// An inspectable plan: the ordered steps a rollout executes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPlan {
    /// The targets, in order.
    pub targets: Vec<Target>,
    /// The steps.
    pub steps: Vec<PlanStep>,
}

/// Why a strategy cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// No targets.
    #[error("the rollout has no targets; list at least one `{{host, container}}` under `targets`")]
    NoTargets,
    /// The same target twice.
    #[error("target {0} is listed twice; each container may appear once")]
    DuplicateTarget(String),
    /// Both `maxUnavailable` and `maxSurge` are zero.
    #[error("rolling strategy with maxUnavailable 0 and maxSurge 0 can never progress; set one of them above 0")]
    NoProgress,
    /// A weight above 100.
    #[error("canary step {step}: setWeight {weight} is above 100")]
    WeightTooHigh {
        /// Step index, from 1.
        step: usize,
        /// The weight.
        weight: u8,
    },
    /// A weight lower than an earlier one.
    #[error("canary step {step}: setWeight {weight} is lower than the earlier {previous}; weights only go up (use abort to go back)")]
    WeightDecreases {
        /// Step index, from 1.
        step: usize,
        /// The weight.
        weight: u8,
        /// The earlier weight.
        previous: u8,
    },
    /// A strategy that replaces containers in place cannot shift traffic.
    #[error("strategy {0} replaces each container in place, so there is no second version to send traffic to; use canary or blueGreen with `traffic`")]
    TrafficNeedsTwoVersions(&'static str),
    /// An analysis the spec does not define.
    #[error("canary step {step}: analysis {name:?} is not defined under `analysis`")]
    UnknownAnalysis {
        /// Step index, from 1.
        step: usize,
        /// The name.
        name: String,
    },
}

/// Plans a rollout of `targets` with `strategy`. Every target appears in exactly one `Update` step.
/// `analyses` are the names the spec defines (to reject a canary step naming an unknown one).
pub fn plan(targets: &[Target], strategy: &Strategy, analyses: &[&str]) -> Result<RolloutPlan, PlanError> {
    if targets.is_empty() {
        return Err(PlanError::NoTargets);
    }
    let mut seen = std::collections::HashSet::new();
    for t in targets {
        if !seen.insert(t) {
            return Err(PlanError::DuplicateTarget(t.to_string()));
        }
    }
    let n = targets.len();
    let weight_of = |done: usize| ((done * 100) / n) as u8;
    let mut steps = Vec::new();
    match strategy {
        Strategy::Recreate {} => steps.push(PlanStep::Update {
            batch: 1,
            targets: (0..n).collect(),
            mode: UpdateMode::StopFirst,
            weight: 100,
        }),
        Strategy::Rolling {
            max_unavailable,
            max_surge,
            batch_delay,
        } => {
            let unavailable = max_unavailable.of(n);
            let surge = max_surge.of(n);
            let (size, mode) = if unavailable > 0 {
                (unavailable, UpdateMode::StopFirst)
            } else if surge > 0 {
                (surge, UpdateMode::StartFirst)
            } else {
                return Err(PlanError::NoProgress);
            };
            // With both set, start-first lets a batch be as large as the sum without dropping below
            // n - maxUnavailable running instances.
            let (size, mode) = if unavailable > 0 && surge > 0 {
                (unavailable + surge, UpdateMode::StartFirst)
            } else {
                (size, mode)
            };
            let size = size.min(n);
            for (i, start) in (0..n).step_by(size).enumerate() {
                if i > 0 && !batch_delay.is_zero() {
                    steps.push(PlanStep::Pause {
                        pause: Pause::For(*batch_delay),
                    });
                }
                let end = (start + size).min(n);
                steps.push(PlanStep::Update {
                    batch: i + 1,
                    targets: (start..end).collect(),
                    mode,
                    weight: weight_of(end),
                });
            }
        }
        Strategy::BlueGreen {
            auto_promote,
            scale_down_delay,
        } => {
            steps.push(PlanStep::Update {
                batch: 1,
                targets: (0..n).collect(),
                mode: UpdateMode::BlueGreen,
                weight: 100,
            });
            if !auto_promote {
                steps.push(PlanStep::Pause {
                    pause: Pause::UntilPromoted,
                });
            }
            steps.push(PlanStep::Promote {
                automatic: *auto_promote,
                scale_down_delay: *scale_down_delay,
            });
            // The old containers stay stopped and retained (the instant rollback target) while this runs:
            // an abort in the window reverts every target.
            if !scale_down_delay.is_zero() {
                steps.push(PlanStep::Pause {
                    pause: Pause::For(*scale_down_delay),
                });
            }
        }
        Strategy::Canary { steps: canary } => {
            let mut done = 0usize;
            let mut previous = 0u8;
            let mut batch = 0usize;
            for (i, step) in canary.iter().enumerate() {
                match step {
                    CanaryStep::SetWeight(w) => {
                        if *w > 100 {
                            return Err(PlanError::WeightTooHigh {
                                step: i + 1,
                                weight: *w,
                            });
                        }
                        if *w < previous {
                            return Err(PlanError::WeightDecreases {
                                step: i + 1,
                                weight: *w,
                                previous,
                            });
                        }
                        previous = *w;
                        let want = canary_count(n, *w);
                        if want > done {
                            batch += 1;
                            steps.push(PlanStep::Update {
                                batch,
                                targets: (done..want).collect(),
                                mode: UpdateMode::StopFirst,
                                weight: *w,
                            });
                            done = want;
                        }
                    }
                    CanaryStep::Pause(p) => steps.push(PlanStep::Pause { pause: *p }),
                    CanaryStep::Analysis(name) => {
                        if !analyses.contains(&name.as_str()) {
                            return Err(PlanError::UnknownAnalysis {
                                step: i + 1,
                                name: name.clone(),
                            });
                        }
                        steps.push(PlanStep::Analysis { name: name.clone() })
                    }
                }
            }
            // As in Argo Rollouts, a canary that ends below 100 % is completed by a final full step.
            if done < n {
                steps.push(PlanStep::Update {
                    batch: batch + 1,
                    targets: (done..n).collect(),
                    mode: UpdateMode::StopFirst,
                    weight: 100,
                });
            }
        }
    }
    Ok(RolloutPlan {
        targets: targets.to_vec(),
        steps,
    })
}

/// Plans a rollout whose traffic is shifted by a load balancer instead of by replacing targets: every target
/// first gets a verified preview beside its running container (no traffic yet); then each canary
/// `setWeight` becomes a [`PlanStep::Traffic`] step (the share of requests, not of targets), and the
/// previews take over at the end ([`PlanStep::Promote`]). For blue-green, the switch is a step to 100 %
/// with the old versions still running through `scaleDownDelay`. Recreate and rolling replace in place and
/// are refused.
pub fn plan_traffic(targets: &[Target], strategy: &Strategy, analyses: &[&str]) -> Result<RolloutPlan, PlanError> {
    // The same checks of targets, weights and analyses as without traffic.
    plan(targets, strategy, analyses)?;
    let stage = PlanStep::Update {
        batch: 1,
        targets: (0..targets.len()).collect(),
        mode: UpdateMode::BlueGreen,
        weight: 0,
    };
    let promote = PlanStep::Promote {
        automatic: true,
        scale_down_delay: Duration::ZERO,
    };
    let mut steps = vec![stage];
    match strategy {
        Strategy::Recreate {} | Strategy::Rolling { .. } => {
            return Err(PlanError::TrafficNeedsTwoVersions(strategy.name()))
        }
        Strategy::BlueGreen {
            auto_promote,
            scale_down_delay,
        } => {
            if !auto_promote {
                steps.push(PlanStep::Pause {
                    pause: Pause::UntilPromoted,
                });
            }
            steps.push(PlanStep::Traffic { weight: 100 });
            if !scale_down_delay.is_zero() {
                steps.push(PlanStep::Pause {
                    pause: Pause::For(*scale_down_delay),
                });
            }
        }
        Strategy::Canary { steps: canary } => {
            let mut last = 0;
            for step in canary {
                steps.push(match step {
                    CanaryStep::SetWeight(w) => {
                        last = *w;
                        PlanStep::Traffic { weight: *w }
                    }
                    CanaryStep::Pause(p) => PlanStep::Pause { pause: *p },
                    CanaryStep::Analysis(name) => PlanStep::Analysis { name: name.clone() },
                });
            }
            if last < 100 {
                steps.push(PlanStep::Traffic { weight: 100 });
            }
        }
    }
    steps.push(promote);
    Ok(RolloutPlan {
        targets: targets.to_vec(),
        steps,
    })
}

/// How many of `n` targets a canary weight covers: rounded up, at least one for any weight above 0.
pub fn canary_count(n: usize, weight: u8) -> usize {
    if weight == 0 {
        return 0;
    }
    (n * weight as usize).div_ceil(100).clamp(1, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop, prop_assert, prop_assert_eq, proptest};

    fn targets(n: usize) -> Vec<Target> {
        (0..n)
            .map(|i| Target {
                host: format!("tcp://127.0.0.{}:2375", i % 3 + 1),
                container: format!("agent-{i}").parse().unwrap(),
            })
            .collect()
    }

    fn updates(plan: &RolloutPlan) -> Vec<(Vec<usize>, UpdateMode, u8)> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                PlanStep::Update {
                    targets, mode, weight, ..
                } => Some((targets.clone(), *mode, *weight)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn canary_plan_matches_the_issue_example() {
        let s: Strategy = serde_json::from_str(
            r#"{"canary":{"steps":[{"setWeight":10},{"pause":"30s"},{"analysis":"error-rate"},{"setWeight":50},{"pause":{}},{"setWeight":100}]}}"#,
        )
        .unwrap();
        let p = plan(&targets(10), &s, &["error-rate"]).unwrap();
        let u = updates(&p);
        assert_eq!(u.iter().map(|x| x.0.len()).collect::<Vec<_>>(), [1, 4, 5]);
        assert!(matches!(p.steps[1], PlanStep::Pause { pause: Pause::For(d) } if d == Duration::from_secs(30)));
        assert!(matches!(
            p.steps[4],
            PlanStep::Pause {
                pause: Pause::UntilPromoted
            }
        ));
        let err = plan(&targets(3), &s, &[]).unwrap_err();
        assert!(err.to_string().contains("error-rate"), "{err}");
    }

    #[test]
    fn a_traffic_canary_stages_every_target_then_moves_only_weights() {
        let s: Strategy = serde_json::from_str(
            r#"{"canary":{"steps":[{"setWeight":10},{"pause":{}},{"analysis":"judge"},{"setWeight":50}]}}"#,
        )
        .unwrap();
        let p = plan_traffic(&targets(4), &s, &["judge"]).unwrap();
        assert_eq!(
            p.steps,
            [
                PlanStep::Update {
                    batch: 1,
                    targets: vec![0, 1, 2, 3],
                    mode: UpdateMode::BlueGreen,
                    weight: 0
                },
                PlanStep::Traffic { weight: 10 },
                PlanStep::Pause {
                    pause: Pause::UntilPromoted
                },
                PlanStep::Analysis { name: "judge".into() },
                PlanStep::Traffic { weight: 50 },
                // Completed to 100 % before the previews take over.
                PlanStep::Traffic { weight: 100 },
                PlanStep::Promote {
                    automatic: true,
                    scale_down_delay: Duration::ZERO
                },
            ]
        );
        let bg = Strategy::BlueGreen {
            auto_promote: false,
            scale_down_delay: Duration::from_secs(30),
        };
        let p = plan_traffic(&targets(2), &bg, &[]).unwrap();
        assert_eq!(p.steps.len(), 5, "{:?}", p.steps);
        assert_eq!(p.steps[2], PlanStep::Traffic { weight: 100 });
        assert!(matches!(p.steps[3], PlanStep::Pause { pause: Pause::For(d) } if d == Duration::from_secs(30)));
        // The same checks as without traffic, and no in-place strategies.
        assert!(plan_traffic(&targets(2), &s, &[]).is_err());
        assert_eq!(
            plan_traffic(&targets(2), &Strategy::Recreate {}, &[]),
            Err(PlanError::TrafficNeedsTwoVersions("recreate"))
        );
    }

    #[test]
    fn bad_strategies_are_refused() {
        assert_eq!(plan(&[], &Strategy::Recreate {}, &[]), Err(PlanError::NoTargets));
        let mut dup = targets(2);
        dup[1] = dup[0].clone();
        assert!(matches!(
            plan(&dup, &Strategy::Recreate {}, &[]),
            Err(PlanError::DuplicateTarget(_))
        ));
        let stuck = Strategy::Rolling {
            max_unavailable: Count::Absolute(0),
            max_surge: Count::Percent(0),
            batch_delay: Duration::ZERO,
        };
        assert_eq!(plan(&targets(3), &stuck, &[]), Err(PlanError::NoProgress));
        let down = Strategy::Canary {
            steps: vec![CanaryStep::SetWeight(50), CanaryStep::SetWeight(20)],
        };
        assert!(matches!(
            plan(&targets(3), &down, &[]),
            Err(PlanError::WeightDecreases { step: 2, .. })
        ));
        assert!("150%".parse::<Count>().is_err());
        assert_eq!("25%".parse::<Count>().unwrap(), Count::Percent(25));
    }

    proptest! {
        #[test]
        fn every_target_exactly_once_and_batches_respect_limits(
            n in 1usize..300,
            unavailable in 0u32..20,
            surge in 0u32..20,
            pct in prop::bool::ANY,
        ) {
            let count = |x: u32| if pct { Count::Percent((x * 5).min(100) as u8) } else { Count::Absolute(x) };
            let s = Strategy::Rolling { max_unavailable: count(unavailable), max_surge: count(surge), batch_delay: Duration::from_secs(1) };
            match plan(&targets(n), &s, &[]) {
                Err(PlanError::NoProgress) => prop_assert!(count(unavailable).of(n) == 0 && count(surge).of(n) == 0),
                Err(e) => prop_assert!(false, "{}", e),
                Ok(p) => {
                    let mut seen: Vec<usize> = updates(&p).into_iter().flat_map(|u| u.0).collect();
                    seen.sort();
                    prop_assert_eq!(seen, (0..n).collect::<Vec<_>>());
                    let (mu, ms) = (count(unavailable).of(n), count(surge).of(n));
                    for (batch, mode, _) in updates(&p) {
                        match mode {
                            // Stop-first: at most maxUnavailable down at once.
                            UpdateMode::StopFirst => prop_assert!(batch.len() <= mu.max(1)),
                            // Start-first: at most maxSurge + maxUnavailable replaced at once.
                            _ => prop_assert!(batch.len() <= (mu + ms).min(n)),
                        }
                    }
                }
            }
        }

        #[test]
        fn canary_weights_are_monotone_and_cover_everyone(
            n in 1usize..200,
            mut weights in prop::collection::vec(0u8..=100, 1..8),
        ) {
            weights.sort();
            let steps = weights.iter().map(|w| CanaryStep::SetWeight(*w)).collect();
            let p = plan(&targets(n), &Strategy::Canary { steps }, &[]).unwrap();
            let u = updates(&p);
            let mut covered = 0;
            let mut last_weight = 0;
            for (batch, _, weight) in &u {
                prop_assert!(!batch.is_empty());
                prop_assert_eq!(batch[0], covered, "batches are contiguous and in order");
                covered += batch.len();
                prop_assert!(*weight >= last_weight);
                last_weight = *weight;
            }
            prop_assert_eq!(covered, n);
            for w in weights.iter().filter(|w| **w > 0) {
                prop_assert!(canary_count(n, *w) >= 1);
            }
        }
    }
}
