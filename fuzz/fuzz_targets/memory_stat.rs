//! A memcg's memory.stat (v1 and v2) → kinds of memory.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oomtrace::{cgroupfs::Version, memory_stat::MemoryStat};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for version in [Version::V1, Version::V2] {
        if let Some(s) = MemoryStat::parse(version, &text, Some(1 << 20)) {
            let _ = (s.kinds(), s.clean_file());
        }
    }
});
