//! The canary judge on the real engine with a real Prometheus scraping the agents: a canary like its
//! baseline passes and the rollout completes; a canary that answers errors is judged worse than the
//! baseline running beside it, and every touched target is reverted.

use crate::health::{prometheus, wait_scraped};
use crate::support::*;

fn rollout(
    w: &World,
    name: &str,
    image: &str,
    agents: &[String],
    canary: &str,
    baseline: &str,
    prom: &str,
) -> std::path::PathBuf {
    let targets: String = agents
        .iter()
        .map(|n| format!("  - {{host: 'unix:///var/run/docker.sock', container: {n}}}\n"))
        .collect();
    // The demo agents count 100 requests per scrape, failing at their error rate; their series carry
    // their version. The canary runs 14 s before the judge looks at the last 12 s.
    let text = format!(
        r#"name: {name}
image: {image}
targets:
{targets}strategy:
  canary: {{steps: [{{setWeight: 25}}, {{pause: 14s}}, {{analysis: judge}}, {{setWeight: 100}}]}}
health: {{minHealthyTime: 1s, deadline: 15s, period: 300ms}}
analysis:
  judge:
    prometheus: {prom}
    judge:
      splitBy: version
      canary: '{canary}'
      baseline: '{baseline}'
      window: 12s
      step: 1s
      minPoints: 8
      metrics:
        - name: error-ratio
          query: 'sum by (version) (rate(agent_requests_total{{code="500"}}[4s])) / sum by (version) (rate(agent_requests_total[4s]))'
          absoluteTolerance: 0.01
          critical: true
"#
    );
    let path = w.state_dir().join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The id of the image `container` runs, and of the image `reference` names (rollouts deploy by digest).
fn image_id(w: &World, container: &str) -> String {
    stdout(&w.docker(&["inspect", "-f", "{{.Image}}", container]))
        .trim()
        .to_owned()
}

fn id_of(w: &World, reference: &str) -> String {
    stdout(&w.docker(&["image", "inspect", "-f", "{{.Id}}", reference]))
        .trim()
        .to_owned()
}

/// The judge's report in a rollout's JSON status.
fn judged(w: &World, name: &str) -> serde_json::Value {
    let status = json(&w.agentctl(&["rollout", "status", name, "-o", "json"]));
    let text = status.to_string();
    let at = text
        .find("\"judge\":{")
        .unwrap_or_else(|| panic!("no judge report: {text}"));
    let report: serde_json::Value = serde_json::Deserializer::from_str(&text[at + 8..])
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    report
}

#[test]
fn the_judge_promotes_a_canary_like_its_baseline_and_reverts_one_that_answers_errors() {
    let img = images();
    let w = World::new("judge");
    let net = w.network("net", "10.234.1.0/24");
    let ips: Vec<String> = (10..14).map(|i| format!("10.234.1.{i}")).collect();
    let agents: Vec<String> = (1..=4).map(|i| w.name(&format!("a{i}"))).collect();
    for (n, ip) in agents.iter().zip(&ips) {
        w.docker_run(
            n,
            &["--restart", "unless-stopped", "--network", &net, "--ip", ip],
            &img.refs["v1"],
        );
    }
    let (_prom, url, _dir) = prometheus(&ips.iter().map(|ip| format!("{ip}:8080")).collect::<Vec<_>>());
    wait_scraped(&url, 4);

    // 2.0.0 serves like 1.0.0: the judge passes and the rollout completes.
    let good = w.name("good");
    let f = rollout(&w, &good, &img.refs["v2"], &agents, "2.0.0", "1.0.0", &url);
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let v2 = id_of(&w, &img.refs["v2"]);
    for n in &agents {
        assert_eq!(image_id(&w, n), v2, "{n}");
    }
    let report = judged(&w, &good);
    assert_eq!(report["judgement"], "pass", "{report}");
    let metric = &report["metrics"][0];
    assert_eq!(metric["classification"], "pass", "{report}");
    assert!(metric["canaryPoints"].as_u64().unwrap() >= 8, "{report}");

    // 9.8.0 fails half its requests: judged worse than the 2.0.0 baseline beside it, reverted (exit 3).
    let bad = w.name("bad");
    let f = rollout(&w, &bad, &img.refs["errors"], &agents, "9.8.0", "2.0.0", &url);
    let out = w.agentctl(&["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("critical metric error-ratio") || stdout(&out).contains("critical metric error-ratio"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    for n in &agents {
        assert_eq!(image_id(&w, n), v2, "{n} runs 2.0.0 again");
    }
    let report = judged(&w, &bad);
    assert_eq!(report["judgement"], "fail", "{report}");
    let metric = &report["metrics"][0];
    assert_eq!(metric["classification"], "high", "{report}");
    assert!(metric["canaryMedian"].as_f64().unwrap() > 0.4, "{report}");
    assert!(metric["baselineMedian"].as_f64().unwrap() < 0.01, "{report}");
    assert!(metric["test"]["lower"].as_f64().unwrap() > 0.01, "{report}");
}
