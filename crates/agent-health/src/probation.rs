//! Probation after a successful update: keep evaluating alert rules for a window, like Prometheus alert
//! rules with a `for` duration. A rule is pending while its probe fails and fires once it has failed for
//! `for`; a fatal observation (a crash, a fatal log line) fires at once; an inconclusive one (a signal
//! source down) never fires, so an outage of the monitoring cannot cause a rollback storm.

use std::time::Duration;

use agent_core::{duration_text, format_duration};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::gate::{Observation, Probe, ProbeContext};

/// A rule: its probe failing for `for_` fires it.
pub struct AlertRule {
    /// Name shown when it fires.
    pub name: String,
    /// What is evaluated.
    pub probe: Box<dyn Probe>,
    /// How long the failure must persist.
    pub for_: Duration,
}

impl std::fmt::Debug for AlertRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertRule")
            .field("name", &self.name)
            .field("for", &self.for_)
            .finish()
    }
}

/// A fired rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// The rule.
    pub rule: String,
    /// What its probe saw last.
    pub reason: String,
    /// How long it had been failing when it fired.
    #[serde(with = "duration_text")]
    pub pending_for: Duration,
    /// When it fired.
    #[serde(with = "time::serde::rfc3339")]
    pub fired_at: OffsetDateTime,
}

/// How a probation window ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum ProbationOutcome {
    /// No rule fired during the window.
    Quiet {
        /// Evaluation rounds.
        rounds: u32,
        /// The window.
        #[serde(with = "duration_text")]
        window: Duration,
    },
    /// A rule fired.
    Fired(Alert),
}

/// Evaluates rules every `period` for `window`.
#[derive(Debug)]
pub struct Probation {
    /// How long to watch.
    pub window: Duration,
    /// Time between evaluations.
    pub period: Duration,
    /// The rules.
    pub rules: Vec<AlertRule>,
}

impl Probation {
    /// Watches until a rule fires or the window passes. Uses `tokio::time` (testable with paused time).
    pub async fn watch(&self, ctx: &ProbeContext, progress: &(dyn Fn(&str) + Send + Sync)) -> ProbationOutcome {
        let start = tokio::time::Instant::now();
        let mut failing_since: Vec<Option<tokio::time::Instant>> = vec![None; self.rules.len()];
        let mut rounds = 0;
        loop {
            let round = tokio::time::Instant::now();
            rounds += 1;
            let results = futures_util::future::join_all(self.rules.iter().map(|r| async move {
                tokio::time::timeout(Duration::from_secs(5), r.probe.check(ctx))
                    .await
                    .unwrap_or_else(|_| Observation::Inconclusive("no answer within 5s".into()))
            }))
            .await;
            for ((rule, since), obs) in self.rules.iter().zip(failing_since.iter_mut()).zip(results) {
                let fire = |pending: Duration, reason: &str| {
                    ProbationOutcome::Fired(Alert {
                        rule: rule.name.clone(),
                        reason: reason.to_owned(),
                        pending_for: pending,
                        fired_at: OffsetDateTime::now_utc(),
                    })
                };
                match &obs {
                    Observation::Fatal(d) => return fire(Duration::ZERO, d),
                    Observation::Fail(d) => {
                        let s = *since.get_or_insert(round);
                        let pending = round - s;
                        if pending >= rule.for_ {
                            return fire(pending, d);
                        }
                        progress(&format!(
                            "rule {} pending for {} of {}: {d}",
                            rule.name,
                            format_duration(pending),
                            format_duration(rule.for_)
                        ));
                    }
                    // Passing resets the rule; inconclusive and pending hold it where it is.
                    Observation::Pass(_) => *since = None,
                    Observation::Pending(_) | Observation::Inconclusive(_) => {}
                }
            }
            if start.elapsed() + self.period > self.window {
                return ProbationOutcome::Quiet {
                    rounds,
                    window: self.window,
                };
            }
            tokio::time::sleep_until(round + self.period).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    struct Script(Vec<Observation>, AtomicU32);

    #[async_trait::async_trait]
    impl Probe for Script {
        fn name(&self) -> &str {
            "script"
        }
        async fn check(&self, _: &ProbeContext) -> Observation {
            let i = self.1.fetch_add(1, Ordering::SeqCst) as usize;
            self.0[i.min(self.0.len() - 1)].clone()
        }
    }

    fn ctx() -> ProbeContext {
        ProbeContext {
            runtime: Arc::new(agent_core::FakeRuntime::default()),
            container: "a".into(),
            started_at: OffsetDateTime::now_utc(),
            baseline_restarts: 0,
            expected_version: None,
            container_id: None,
        }
    }

    fn probation(script: Vec<Observation>) -> Probation {
        Probation {
            window: Duration::from_secs(30),
            period: Duration::from_secs(1),
            rules: vec![AlertRule {
                name: "hb".into(),
                probe: Box::new(Script(script, AtomicU32::new(0))),
                for_: Duration::from_secs(3),
            }],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fires_only_after_for_and_resets_on_pass() {
        use Observation::*;
        let p = probation(vec![
            Fail("old".into()),
            Fail("old".into()),
            Pass("ok".into()),
            Fail("x".into()),
            Fail("x".into()),
            Fail("x".into()),
            Fail("lost".into()),
        ]);
        match p.watch(&ctx(), &|_| {}).await {
            ProbationOutcome::Fired(a) => {
                assert_eq!(a.pending_for, Duration::from_secs(3));
                assert_eq!(a.reason, "lost");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn inconclusive_never_fires_and_fatal_fires_at_once() {
        let p = probation(vec![Observation::Inconclusive("prometheus down".into())]);
        assert!(matches!(p.watch(&ctx(), &|_| {}).await, ProbationOutcome::Quiet { .. }));
        let p = probation(vec![
            Observation::Pass("".into()),
            Observation::Fatal("restarted 1 time".into()),
        ]);
        match p.watch(&ctx(), &|_| {}).await {
            ProbationOutcome::Fired(a) => assert_eq!(a.pending_for, Duration::ZERO),
            other => panic!("{other:?}"),
        }
    }
}
