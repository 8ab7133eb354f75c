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

/// PF_KTHREAD in the flags field of /proc/<pid>/stat.
const PF_KTHREAD: u64 = 0x0020_0000;

/// State, flags and start time (ns since boot) from /proc/<pid>/stat.
fn stat_fields(pid: u32) -> Option<(char, u64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may hold spaces and parentheses: split after the last ')'.
    let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let state = rest.first()?.chars().next()?;
    let flags: u64 = rest.get(6)?.parse().ok()?;
    let ticks: u64 = rest.get(19)?.parse().ok()?;
    Some((state, flags, ticks * (1_000_000_000 / ticks_per_second())))
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Processes started this close before oomtrace may already be in the trace: no baseline.
const BASELINE_MARGIN_NS: u64 = 1_000_000_000;

/// None when the process is gone or exiting (a dying process shows no executable, command line
/// or memory: what was read before stays). `started_boot_ns` is oomtrace's own start on
/// CLOCK_BOOTTIME: processes clearly older than that get their resident memory recorded as held
/// before the trace.
/// A thread's current name (`/proc/<pid>/task/<tid>/comm`); None if it is gone.
pub fn thread_comm(pid: u32, tid: u32) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
    let s = s.trim_end_matches('\n');
    (!s.is_empty()).then(|| s.to_string())
}

pub fn process_info(pid: u32, started_boot_ns: u64, version: Version) -> Option<ProcessInfo> {
    let (state, flags, start_ns) = stat_fields(pid)?;
    if matches!(state, 'Z' | 'X' | 'x') {
        return None;
    }
    let kernel_thread = flags & PF_KTHREAD != 0;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    let argv = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| cmdline::split_proc_cmdline(&raw))
        .unwrap_or_default();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    if !kernel_thread && exe.is_none() && argv.is_empty() {
        // Exiting: its mm is already gone.
        return None;
    }
    let rss_at_start = match start_ns {
        s if s + BASELINE_MARGIN_NS < started_boot_ns && !kernel_thread => {
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
        guest_ram_watched: false,
    })
}

/// A qemu process's guest RAM mappings from /proc/<pid>/maps: read-write mappings of exactly the
/// guest size (qemu maps guest RAM in one piece per RAM block; THP alignment may add up to
/// 2 MiB), anonymous, or a shared memfd (`memory-backend-memfd`, which vhost-user devices and
/// virtiofs need: `/memfd:memory-backend-memfd`). At most `GUEST_RANGES`, largest first.
pub fn guest_ram_ranges(maps: &str, guest_memory: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = maps
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            // offset, dev, inode; a path (or [heap], [stack]) means not plain anonymous memory,
            // unless it is a memfd mapped shared.
            let rest: Vec<&str> = f.collect();
            let memfd = rest.get(3).is_some_and(|p| p.starts_with("/memfd:")) && perms == "rw-s";
            if (rest.len() > 3 && !memfd) || !perms.starts_with("rw") {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            let size = b.checked_sub(a)?;
            (size >= guest_memory && size <= guest_memory + (2 << 20)).then_some((a, b))
        })
        .collect();
    out.sort_by_key(|(a, b)| std::cmp::Reverse(b - a));
    out.truncate(oomtrace_common::GUEST_RANGES);
    out
}

/// Resident bytes (smaps `Rss:`) of the mappings of /proc/<pid>/smaps that lie inside
/// `ranges`: how much of a qemu's guest RAM is faulted in.
pub fn rss_of_ranges(smaps: &str, ranges: &[(u64, u64)]) -> u64 {
    let mut inside = false;
    let mut kb = 0u64;
    for line in smaps.lines() {
        if let Some(rest) = line.strip_prefix("Rss:") {
            if inside {
                let n = rest.trim().trim_end_matches("kB").trim();
                kb = kb.saturating_add(n.parse::<u64>().unwrap_or(0));
            }
            continue;
        }
        // A mapping's header: "start-end perms offset dev inode [path]".
        let Some((a, b)) = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| {
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            })
        else {
            continue;
        };
        inside = ranges.iter().any(|(s, e)| a >= *s && b <= *e);
    }
    kb.saturating_mul(1024)
}

/// This process's CPU seconds and resident bytes, from /proc/self.
pub fn self_cost() -> (f64, i64) {
    // SAFETY: sysconf has no preconditions.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1),
        )
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" that ends comm: utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i)?.parse::<f64>().ok())
        .sum();
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    (ticks / tick, pages * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_of_ranges_sums_the_mappings_inside_them() {
        let smaps = "\
55d0a1000000-55d0a1400000 rw-p 00000000 00:00 0 [heap]
Size:               4096 kB
Rss:                 100 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:              131072 kB
Anonymous:        131072 kB
7f0010000000-7f0025800000 rw-p 00000000 00:00 0
Size:             352256 kB
Rss:                4096 kB
VmFlags: rd wr mr mw me ac sd
";
        let ram = [(0x7f0000000000, 0x7f0025800000)];
        assert_eq!(rss_of_ranges(smaps, &ram), (131072 + 4096) << 10);
        assert_eq!(rss_of_ranges(smaps, &[]), 0);
        assert_eq!(rss_of_ranges("Rss: 5 kB\ngarbage-zz\nRss: x kB", &ram), 0);
    }

    #[test]
    fn guest_ram_is_the_anonymous_or_memfd_rw_mapping_of_guest_size() {
        let maps = "\
55d0a0000000-55d0a0200000 r-xp 00000000 fe:01 123 /usr/bin/qemu-system-x86_64
55d0a1000000-55d0a1400000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0025800000 rw-p 00000000 00:00 0
7f0025800000-7f0025a00000 rw-p 00000000 00:00 0
7f1000000000-7f1025800000 r--p 00000000 00:00 0
7f2000000000-7f2025a00000 rw-p 00000000 00:00 0
7f3000000000-7f3025800000 rw-s 00000000 00:01 99 /memfd:pc.ram (deleted)
";
        let g = 600 << 20;
        assert_eq!(
            guest_ram_ranges(maps, g),
            vec![
                (0x7f2000000000, 0x7f2025a00000),
                (0x7f0000000000, 0x7f0025800000),
                (0x7f3000000000, 0x7f3025800000)
            ]
        );
        // A memfd mapped private, or another file mapped shared, is not guest RAM.
        let files = "\
7f3000000000-7f3025800000 rw-p 00000000 00:01 99 /memfd:pc.ram (deleted)
7f4000000000-7f4025800000 rw-s 00000000 fe:01 77 /var/lib/disk.img
";
        assert!(guest_ram_ranges(files, g).is_empty());
        assert!(guest_ram_ranges(maps, 1 << 30).is_empty());
        assert!(guest_ram_ranges("garbage\n\n-", g).is_empty());
    }
}
