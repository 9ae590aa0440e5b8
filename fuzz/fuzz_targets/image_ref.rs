//! Image references: parsing never panics, and what parses prints back to itself and parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(r) = text.parse::<agent_core::ImageRef>() {
        let again: agent_core::ImageRef = r.to_string().parse().expect("a printed reference parses");
        assert_eq!(again, r);
    }
});
