//! Rollout specs (YAML or JSON): parsing and validation never panic, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(spec) = agent_rollout::RolloutSpec::parse(text, "fuzz.yaml") {
        let _ = spec.plan();
    }
});
