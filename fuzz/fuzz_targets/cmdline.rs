//! A process's command line (NUL-separated, as /proc/PID/cmdline) → VM facts; sizes as qemu
//! and KubeVirt write them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oomtrace::kubevirt::cmdline;

fuzz_target!(|data: &[u8]| {
    let argv: Vec<String> = data
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let _ = cmdline::parse(&argv);
    for a in &argv {
        let _ = cmdline::parse_qemu_memory(a);
        let _ = cmdline::parse_size(a, 1);
    }
});
