//! Rendering of model changes and the summary: one text line or one JSON line each. Pure
//! formatting over values the collector already holds; no I/O besides writing to the sink.
use std::io::Write;

use serde::Serialize;

pub use crate::{
    clock::{Clock, monotonic_ns},
    units::bytes,
};
use crate::{
    model::{Change, Summary},
    visible::Visible,
};

/// Long memcg paths are cut to their last component in text lines; JSON keeps the whole path.
fn short_path(path: &str) -> String {
    if path.chars().count() <= 32 {
        return path.to_string();
    }
    let last = path.rsplit('/').next().unwrap_or(path);
    let last: String = last.chars().take(40).collect();
    format!("…/{last}")
}

fn opt_bytes(v: Option<u64>) -> String {
    crate::units::bytes_or(v, "unlimited")
}

fn usage_limit(usage: Option<u64>, limit: Option<u64>) -> String {
    match usage {
        Some(u) => format!("{}/{}", bytes(u as i64), opt_bytes(limit)),
        None => "?".to_string(),
    }
}

#[derive(Serialize)]
struct JsonLine<'a, T: Serialize> {
    time: f64,
    #[serde(flatten)]
    inner: &'a T,
}

/// The columns every per-thread line starts with: time, memcg, pid/tid, thread, process.
fn thread_columns(
    clock: &Clock,
    ts_ns: u64,
    memcg: &str,
    pid: u32,
    tid: u32,
    comm: &str,
    process: &str,
) -> String {
    format!(
        "{:>9.3}s {:<28} {:>7}/{:<7} {:<16} {:<16}",
        clock.since_start(ts_ns),
        Visible(&short_path(memcg)),
        pid,
        tid,
        Visible(comm),
        Visible(process)
    )
}

pub fn text_line(clock: &Clock, change: &Change) -> String {
    match change {
        Change::Charge(r) => format!(
            "{} {:<10} {:>12} total {:>11}  memcg {}",
            thread_columns(clock, r.ts_ns, &r.memcg, r.pid, r.tid, &r.comm, &r.process),
            r.class.name(),
            format!("{}{}", if r.delta >= 0 { "+" } else { "" }, bytes(r.delta)),
            bytes(r.total),
            usage_limit(r.usage, r.limit),
        ),
        Change::Oom(o) => format!(
            "{:>9.3}s *** OOM KILL in {} (usage {}): invoked by \"{}\" tid {} of {} pid {}; \
             killed {} pid {} (anon-rss {}, file-rss {}, shmem-rss {}); oomtrace saw the victim charge {} anon{}",
            clock.since_start(o.ts_ns),
            Visible(&o.memcg),
            usage_limit(o.usage, o.limit),
            Visible(&o.invoker_comm),
            o.invoker_tid,
            Visible(&o.invoker_process),
            o.invoker_pid,
            Visible(&o.victim_comm),
            o.victim_pid,
            bytes(o.victim_anon_rss_kb as i64 * 1024),
            bytes(o.victim_file_rss_kb as i64 * 1024),
            bytes(o.victim_shmem_rss_kb as i64 * 1024),
            bytes(o.victim_charged_anon),
            match &o.group {
                Some(g) => format!(
                    "; memory.oom.group of {}: its other tasks die with it",
                    Visible(g)
                ),
                None => String::new(),
            },
        ),
        Change::OomGroupVictim(g) => format!(
            "{:>9.3}s *** killed with it (memory.oom.group of {}): {} pid {} (anon-rss {}, file-rss {}, shmem-rss {}); oomtrace saw it charge {}",
            clock.since_start(g.victim.ts_ns),
            Visible(&g.group),
            Visible(&g.victim.comm),
            g.victim.pid,
            bytes(g.victim.anon_rss_kb as i64 * 1024),
            bytes(g.victim.file_rss_kb as i64 * 1024),
            bytes(g.victim.shmem_rss_kb as i64 * 1024),
            bytes(g.victim.charged),
        ),
        Change::Reclaim(r) => format!(
            "{} reclaim at limit: {} pages in {:.2} ms",
            thread_columns(clock, r.ts_ns, &r.memcg, r.pid, r.tid, &r.comm, &r.process),
            r.nr_reclaimed,
            r.duration_ns as f64 / 1e6,
        ),
        Change::OomAttempt(o) => format!(
            "{} memcg OOM ({} limit {}): {} after {:.1} ms",
            thread_columns(clock, o.ts_ns, &o.memcg, o.pid, o.tid, &o.comm, &o.process),
            o.usage.map_or("?".into(), |u| bytes(u as i64)),
            o.limit.map_or("?".into(), |l| bytes(l as i64)),
            if o.killed {
                "a victim was chosen"
            } else {
                "nothing could be killed"
            },
            o.duration_ns as f64 / 1e6,
        ),
        Change::Exec(e) => format!(
            "{} exec'd (was \"{}\"){}",
            thread_columns(clock, e.ts_ns, &e.memcg, e.pid, e.tid, &e.comm, &e.comm),
            Visible(&e.old_comm),
            if e.memcg.is_empty() {
                String::new()
            } else {
                format!(" in memcg {}", Visible(&e.memcg))
            },
        ),
        Change::KillSignal(k) => format!(
            "{} got {} from {} (pid {}, {}): not the kernel's OOM killer{}{}",
            thread_columns(clock, k.ts_ns, &k.memcg, k.pid, k.tid, &k.comm, &k.process),
            k.signal,
            Visible(&k.sender_comm),
            k.sender_pid,
            k.sender_kind,
            match (k.usage, k.limit) {
                (Some(u), Some(l)) =>
                    format!("; memcg at {} of {}", bytes(u as i64), bytes(l as i64)),
                (Some(u), None) => format!("; memcg at {}", bytes(u as i64)),
                _ => String::new(),
            },
            if k.result == "delivered" {
                String::new()
            } else {
                format!(" ({})", k.result)
            },
        ),
        Change::Exit(e) => format!(
            "{} exited{}",
            thread_columns(clock, e.ts_ns, "", e.pid, e.tid, &e.comm, &e.process),
            if e.group_dead {
                " (last thread of the process)"
            } else {
                ""
            },
        ),
    }
}

pub fn json_line(clock: &Clock, change: &Change) -> String {
    let ts = match change {
        Change::Charge(r) => r.ts_ns,
        Change::Oom(o) => o.ts_ns,
        Change::OomGroupVictim(g) => g.victim.ts_ns,
        Change::Reclaim(r) => r.ts_ns,
        Change::Exit(e) => e.ts_ns,
        Change::OomAttempt(o) => o.ts_ns,
        Change::Exec(e) => e.ts_ns,
        Change::KillSignal(k) => k.ts_ns,
    };
    serde_json::to_string(&JsonLine {
        time: clock.unix_seconds(ts),
        inner: change,
    })
    .unwrap_or_else(|e| format!("{{\"type\":\"error\",\"error\":\"{e}\"}}"))
}

/// Page cache with its shmem part, where it has one and the hook told it apart.
fn page_cache(file: i64, shmem: Option<i64>) -> String {
    match shmem {
        Some(sh) if sh != 0 => format!("{} of which shmem {}", bytes(file), bytes(sh)),
        _ => bytes(file),
    }
}

pub fn write_summary(out: &mut dyn Write, json: bool, s: &Summary) -> std::io::Result<()> {
    if json {
        let line = serde_json::to_string(s)
            .unwrap_or_else(|e| format!("{{\"type\":\"error\",\"error\":\"{e}\"}}"));
        return writeln!(out, "{line}");
    }
    let c = &s.counters;
    writeln!(
        out,
        "summary: {} events, {} ring-buffer drops, {} rare-event drops, {} untracked (map full), {} decode errors",
        c.events, c.ring_drops, c.rare_drops, c.map_full, c.decode_errors
    )?;
    if c.skipped_runs > 0 {
        writeln!(
            out,
            "  {} hook runs skipped by the kernel (a program already active on the CPU): charges or OOM events lost",
            c.skipped_runs
        )?;
    }
    let mut by_peak: Vec<_> = s
        .processes
        .iter()
        .filter(|p| !crate::model::views::is_noise(&[p.total, p.peak]))
        .collect();
    by_peak.sort_by_key(|p| std::cmp::Reverse(p.peak));
    for p in by_peak.into_iter().take(20) {
        writeln!(
            out,
            "  {:>7} {:<16} charged {:>11} now, peak {:>11} (anon {}, file {}, kernel {}{}, guest {})",
            p.pid,
            Visible(&p.process),
            bytes(p.total),
            bytes(p.peak),
            bytes(p.anon),
            page_cache(p.file, p.shmem),
            bytes(p.kernel),
            match p.sock {
                Some(s) if s != 0 => format!(", sock {}", bytes(s)),
                _ => String::new(),
            },
            bytes(p.guest)
        )?;
    }
    for o in &s.ooms {
        writeln!(
            out,
            "  OOM kill in {}: invoker \"{}\" (tid {}, {}), victim {} pid {}",
            Visible(&o.memcg),
            Visible(&o.invoker_comm),
            o.invoker_tid,
            Visible(&o.invoker_process),
            Visible(&o.victim_comm),
            o.victim_pid
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_picks_the_largest_fitting_binary_unit_and_keeps_sign() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(4096), "4.0 KiB");
        assert_eq!(bytes(-262144), "-256.0 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(bytes(5 << 30), "5.00 GiB");
        assert_eq!(bytes(i64::MIN), "-8589934592.00 GiB");
    }
}
