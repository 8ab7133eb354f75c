//! A container bundle's config.json (written by the runtime from a pod's spec) → pod names.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = oomtrace::runtime_state::parse_config(&String::from_utf8_lossy(data));
});
