//! Log text → lines → prefixes → OOM reports → explanation → text and JSON output.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oomtrace::explain::{Hints, Options, Source, run_on};

fuzz_target!(|data: &[u8]| {
    for json in [false, true] {
        let opts = Options {
            source: Source::Stdin,
            json,
            hints: Hints::default(),
        };
        let _ = run_on(data, "fuzz input", &opts, &mut Vec::new());
    }
});
