//! Replays the fuzz corpus (fuzz/corpus, grown by `scripts/fuzz`) through the same parsers as the fuzz
//! targets, so every input the fuzzer kept, including past crashes, is checked in every test run.

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut out = Vec::new();
    for dir in [root.join("corpus").join(target), root.join("artifacts").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            out.push((e.path(), std::fs::read(e.path()).unwrap()));
        }
    }
    out
}

#[test]
fn image_references_round_trip() {
    let all = inputs("image_ref");
    assert!(all.len() >= 5, "the corpus is in the repository");
    for (path, data) in all {
        let Ok(text) = std::str::from_utf8(&data) else { continue };
        if let Ok(r) = text.parse::<agent_core::ImageRef>() {
            let again: agent_core::ImageRef = r
                .to_string()
                .parse()
                .unwrap_or_else(|e| panic!("{}: {r} does not parse back: {e}", path.display()));
            assert_eq!(again, r, "{}", path.display());
        }
    }
}

#[test]
fn rollout_specs_never_panic_and_the_seeds_are_valid() {
    let all = inputs("rollout_spec");
    assert!(all.len() >= 3);
    for (path, data) in all {
        let Ok(text) = std::str::from_utf8(&data) else { continue };
        let parsed = agent_rollout::RolloutSpec::parse(text, "corpus");
        if let Ok(spec) = &parsed {
            let _ = spec.plan();
        }
        let seed = path.extension().is_some_and(|e| e == "yaml" || e == "json");
        assert!(!seed || parsed.is_ok(), "{}: {:?}", path.display(), parsed.err());
    }
}

#[test]
fn prometheus_text_never_panics() {
    for (_, data) in inputs("prom_text") {
        if let Ok(text) = std::str::from_utf8(&data) {
            let _ = agent_health::parse_text(text);
        }
    }
}

#[test]
fn heartbeats_are_parsed_or_refused_with_a_reason() {
    let all = inputs("heartbeat");
    assert!(all.len() >= 3);
    for (path, data) in all {
        if let Err(e) = agent_health::Heartbeat::parse(&data) {
            assert!(
                e.starts_with("malformed heartbeat") || e.starts_with("invalid heartbeat"),
                "{}: {e}",
                path.display()
            );
        }
    }
}
