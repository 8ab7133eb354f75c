//! What /proc tells about a process, for the model's ProcessInfo. Read once per process.
use std::fs;

use crate::{
    cgroupfs::{self, Version},
    kubevirt::cmdline,
    model::ProcessInfo,
};

/// Clock ticks per second for /proc/<pid>/stat start times.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// Start time of a process in ns since boot (field 22 of /proc/<pid>/stat).
fn start_ns(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some(ticks * (1_000_000_000 / ticks_per_second()))
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Processes started this close before oomtrace may already be in the trace: no baseline.
const BASELINE_MARGIN_NS: u64 = 1_000_000_000;

/// None when the process is gone. `started_boot_ns` is oomtrace's own start on CLOCK_BOOTTIME:
/// processes clearly older than that get their resident memory recorded as held before the trace.
pub fn process_info(pid: u32, started_boot_ns: u64, version: Version) -> Option<ProcessInfo> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    let argv = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| cmdline::split_proc_cmdline(&raw))
        .unwrap_or_default();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    // Kernel threads have no executable, no command line and no memory map.
    let kernel_thread = exe.is_none() && argv.is_empty() && status_kb(&status, "VmSize:").is_none();
    let rss_at_start = match start_ns(pid) {
        Some(s) if s + BASELINE_MARGIN_NS < started_boot_ns && !kernel_thread => {
            let anon = status_kb(&status, "RssAnon:").unwrap_or(0) * 1024;
            let other = (status_kb(&status, "RssFile:").unwrap_or(0)
                + status_kb(&status, "RssShmem:").unwrap_or(0))
                * 1024;
            Some((anon, other))
        }
        _ => None,
    };
    let memcg = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|t| cgroupfs::memcg_line(&t, version));
    Some(ProcessInfo {
        memcg,
        comm: comm.trim_end().to_string(),
        exe,
        kernel_thread: Some(kernel_thread),
        vm: cmdline::parse(&argv),
        rss_at_start,
    })
}
