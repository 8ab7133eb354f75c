//! Text for the model's views: the periodic `tail --by` tables and the OOM post-mortem.
//! Pure formatting of values already computed.
use std::io::{self, Write};

use clap::ValueEnum;

use crate::{
    kubevirt::identity,
    model::views::{MemcgView, PostMortem, ProcessView, Snapshot, ThreadView},
    units::{bytes, bytes_or, signed},
    visible::{Visible, visible},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum By {
    Class,
    Process,
    Thread,
}

fn opt_bytes(v: Option<u64>) -> String {
    bytes_or(v, "-")
}

/// "/…/pod0b5e (pod 0b5e1c2d (burstable), VM default/vm1)": the path and who it belongs to.
pub fn memcg_title(m: &MemcgView) -> String {
    let mut who = Vec::new();
    if let Some(name) = &m.pod_name {
        who.push(format!("pod {}", Visible(name)));
    } else if let Some(p) = &m.pod {
        who.push(visible(&identity::describe(p)).into_owned());
    }
    if let Some(c) = &m.container_name {
        who.push(format!("container {}", Visible(c)));
    }
    if let Some(vm) = &m.vm {
        who.push(format!("VM {}", Visible(vm)));
    }
    if who.is_empty() {
        visible(&m.memcg).into_owned()
    } else {
        format!("{} ({})", Visible(&m.memcg), who.join(", "))
    }
}

pub fn memcg_line(out: &mut dyn Write, m: &MemcgView) -> io::Result<()> {
    let rate = m
        .rate_10s
        .map_or_else(|| "-".into(), |r| format!("{}/s", signed(r as i64)));
    let eta = m
        .time_to_limit_s
        .map_or_else(String::new, |s| format!(", limit in {s:.0} s at this rate"));
    writeln!(
        out,
        "memcg {}\n  usage {} of {} (headroom {}), growing {rate} over 10 s{eta}; guest RAM {}, overhead {}",
        memcg_title(m),
        opt_bytes(m.usage),
        m.limit
            .map_or_else(|| "no limit".into(), |l| bytes(l as i64)),
        m.headroom.map_or_else(|| "-".into(), bytes),
        bytes(m.guest),
        bytes(m.overhead),
    )?;
    if let Some(p) = &m.pressure {
        let window = format!("{:.0} s", p.window_s);
        let kills = p
            .oom_kills
            .map_or_else(String::new, |k| format!(", {k} OOM kill(s)"));
        let stalled = match (p.stalled_some_60s, p.stalled_full_60s) {
            (Some(some), full) => format!(
                "; stalled on memory {:.0}% (some) / {} (full) of the last {window}",
                some * 100.0,
                full.map_or_else(|| "-".into(), |f| format!("{:.0}%", f * 100.0))
            ),
            (None, _) => "; no stall times (PSI: cgroup v2 only)".to_string(),
        };
        writeln!(
            out,
            "  pressure: limit hit {} times ({} in the last {window}){kills}{stalled}",
            p.limit_hits, p.limit_hits_60s
        )?;
    }
    if let Some(k) = &m.kinds {
        kinds_line(out, k)?;
    }
    Ok(())
}

/// "  kinds (memcg's memory.stat): anon 1.2 GiB (THP 0 B), page cache 300 MiB (clean 200 MiB,
/// dirty 90 MiB, writeback 10 MiB), shmem 0 B, sock -, kernel 12 MiB (slab …); 60 s: page
/// cache +250 MiB". A kind the kernel does not count for a memcg is "-".
pub fn kinds_line(out: &mut dyn Write, k: &crate::model::kinds::KindsView) -> io::Result<()> {
    let b = |kind: &str| opt_bytes(k.bytes(kind));
    let grew = k.grew_most.map_or_else(String::new, |(kind, d)| {
        format!("; grew most in {:.0} s: {kind} {}", k.window_s, signed(d))
    });
    writeln!(
        out,
        "  kinds (the memcg's {}): anon {} (THP {}), page cache {} (clean {}, dirty {}, writeback {}), shmem {}, sock {}, kernel {} (slab {}, page tables {}, KVM page tables {}, stacks {}){grew}",
        k.source,
        b("anon"),
        b("anon_thp"),
        b("page_cache"),
        b("page_cache_clean"),
        b("page_cache_dirty"),
        b("page_cache_writeback"),
        b("shmem"),
        b("sock"),
        b("kernel"),
        b("slab"),
        b("pagetables"),
        b("sec_pagetables"),
        b("kernel_stack"),
    )
}

fn class_table(out: &mut dyn Write, m: &MemcgView) -> io::Result<()> {
    writeln!(
        out,
        "  {:<22} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "class",
        "now",
        "peak",
        "guest",
        "anon",
        "page cache",
        "shmem",
        "sock",
        "kernel",
        "10 s",
        "60 s"
    )?;
    let or_dash = |v: Option<i64>| v.map_or_else(|| "-".into(), bytes);
    for c in m
        .classes
        .iter()
        .filter(|c| !crate::model::views::is_noise(&[c.now, c.peak, c.last_60s]))
    {
        writeln!(
            out,
            "  {:<22} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
            c.class.name(),
            bytes(c.now),
            bytes(c.peak),
            bytes(c.guest),
            bytes(c.anon),
            bytes(c.page_cache),
            or_dash(c.shmem),
            or_dash(c.sock),
            bytes(c.kernel),
            signed(c.last_10s),
            signed(c.last_60s)
        )?;
    }
    Ok(())
}

/// "anon 76.0 MiB, kernel 240.0 KiB": the kinds a process or thread charged, the ones that are
/// not noise, largest first; a kind the hook could not tell (None) is left out.
fn kinds_cell(
    anon: i64,
    page_cache: i64,
    shmem: Option<i64>,
    sock: Option<i64>,
    kernel: i64,
) -> String {
    let mut kinds = [
        ("anon", anon),
        ("page cache", page_cache),
        ("shmem", shmem.unwrap_or(0)),
        ("sock", sock.unwrap_or(0)),
        ("kernel", kernel),
    ];
    kinds.sort_by_key(|(_, b)| std::cmp::Reverse(b.abs()));
    kinds
        .iter()
        .filter(|(_, b)| !crate::model::views::is_noise(&[*b]))
        .map(|(k, b)| format!("{k} {}", bytes(*b)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn budget_table(out: &mut dyn Write, m: &MemcgView) -> io::Result<()> {
    if m.budget.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "  {:<22} {:>11} {:>11} {:>11}   (KubeVirt's overhead reservation, {}; reclaimable: clean page cache, not counted against it)",
        "budget item",
        "reserved",
        "held",
        "reclaimable",
        m.budget_profile.unwrap_or("?")
    )?;
    for b in &m.budget {
        writeln!(
            out,
            "  {:<22} {:>11} {:>11} {:>11}{}",
            b.item,
            bytes(b.reserved as i64),
            bytes(b.observed),
            bytes(b.reclaimable),
            if b.over { "  OVER" } else { "" }
        )?;
    }
    Ok(())
}

fn process_table(out: &mut dyn Write, ps: &[ProcessView], n: usize) -> io::Result<()> {
    writeln!(
        out,
        "  {:>7} {:<16} {:<22} {:>11} {:>11} {:>11} {:>11}  kinds",
        "pid", "process", "class", "now", "peak", "10 s", "60 s"
    )?;
    for p in ps.iter().take(n) {
        writeln!(
            out,
            "  {:>7} {:<16} {:<22} {:>11} {:>11} {:>11} {:>11}  {}",
            p.pid,
            Visible(&p.process),
            p.class.name(),
            bytes(p.now),
            bytes(p.peak),
            signed(p.last_10s),
            signed(p.last_60s),
            kinds_cell(p.anon, p.page_cache, p.shmem, p.sock, p.kernel)
        )?;
    }
    Ok(())
}

fn thread_table(out: &mut dyn Write, ts: &[ThreadView], n: usize) -> io::Result<()> {
    writeln!(
        out,
        "  {:>7} {:<16} {:<16} {:<22} {:>11} {:>11} {:>11}  kinds",
        "tid", "thread", "process", "class", "now", "10 s", "60 s"
    )?;
    for t in ts.iter().take(n) {
        writeln!(
            out,
            "  {:>7} {:<16} {:<16} {:<22} {:>11} {:>11} {:>11}  {}",
            t.tid,
            Visible(&t.comm),
            Visible(&t.process),
            t.class.name(),
            bytes(t.now),
            signed(t.last_10s),
            signed(t.last_60s),
            kinds_cell(t.anon, t.page_cache, t.shmem, t.sock, t.kernel)
        )?;
    }
    Ok(())
}

/// The periodic `tail --by` block.
pub fn snapshot(out: &mut dyn Write, s: &Snapshot, by: By, since_start_s: f64) -> io::Result<()> {
    writeln!(out, "--- {since_start_s:.1}s ---")?;
    for m in s.memcgs.iter().take(8) {
        memcg_line(out, m)?;
        if by == By::Class {
            class_table(out, m)?;
            budget_table(out, m)?;
        }
    }
    match by {
        By::Class => Ok(()),
        By::Process => process_table(out, &s.processes, 15),
        By::Thread => thread_table(out, &s.threads, 20),
    }
}

/// A snapshot's process and thread tables (`top`'s pod detail, under its `By::Class` block).
pub fn snapshot_tables(out: &mut dyn Write, s: &Snapshot) -> io::Result<()> {
    writeln!(out, "processes:")?;
    process_table(out, &s.processes, 15)?;
    writeln!(out, "threads:")?;
    thread_table(out, &s.threads, 20)
}

/// The post-mortem block printed under an OOM line.
pub fn post_mortem(out: &mut dyn Write, pm: &PostMortem) -> io::Result<()> {
    writeln!(out, "  {}", Visible(&pm.sentence))?;
    write!(out, "  ")?;
    memcg_line(out, &pm.memcg)?;
    class_table(out, &pm.memcg)?;
    budget_table(out, &pm.memcg)?;
    writeln!(out, "  what each process charged since oomtrace started:")?;
    process_table(out, &pm.processes, 10)?;
    writeln!(out, "  top threads by growth in the last 60 s:")?;
    thread_table(out, &pm.top, 5)
}

/// An OOM kill as `tail` prints it: its line, then its post-mortem.
pub fn kill(
    out: &mut dyn Write,
    clock: &crate::output::Clock,
    row: &crate::model::OomRow,
) -> io::Result<()> {
    writeln!(
        out,
        "{}",
        crate::output::text_line(clock, &crate::model::Change::Oom(row.clone()))
    )?;
    for victim in &row.group_victims {
        let member = crate::model::Change::OomGroupVictim(crate::model::OomGroupVictimRow {
            oom_ts_ns: row.ts_ns,
            invoker_tid: row.invoker_tid,
            group: row.group.clone().unwrap_or_default(),
            victim: victim.clone(),
        });
        writeln!(out, "{}", crate::output::text_line(clock, &member))?;
    }
    if let Some(pm) = &row.post_mortem {
        post_mortem(out, pm)?;
    }
    Ok(())
}
