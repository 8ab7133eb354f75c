//! A memcg path (a tenant may name its delegated cgroups) → pod identity.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = oomtrace::kubevirt::identity::parse(&String::from_utf8_lossy(data));
});
