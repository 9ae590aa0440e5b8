//! Heartbeat bodies as the control center receives them: parsing and validation never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = agent_health::Heartbeat::parse(data);
});
