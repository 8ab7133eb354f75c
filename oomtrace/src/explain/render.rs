//! Text form of an explained report: the sentence first, then the facts it rests on.
use std::io::{self, Write};

use super::interpret::Explanation;
use crate::{
    kubevirt::identity,
    units::{bytes_u64 as b, kib as kb},
};

pub fn text(out: &mut dyn Write, n: usize, e: &Explanation) -> io::Result<()> {
    let r = &e.report;
    let when = e
        .time
        .as_deref()
        .map(|t| format!(", time {t}"))
        .unwrap_or_default();
    writeln!(out, "OOM report {n} (line {}{when})", r.first_line)?;
    writeln!(out, "  {}", e.summary)?;
    if let Some(m) = &e.memcg {
        let who = e
            .pod
            .as_ref()
            .map(identity::describe)
            .unwrap_or_else(|| "not a pod".into());
        let v = e
            .cgroup_version
            .map(|v| format!("; cgroup v{v}"))
            .unwrap_or_default();
        writeln!(out, "  memcg       {m}  ({who}{v})")?;
    }
    if let Some(t) = e
        .task_memcg
        .as_ref()
        .filter(|t| Some(*t) != e.memcg.as_ref())
    {
        writeln!(out, "  task memcg  {t}")?;
    }
    for c in &r.counters {
        let limit = if c.unlimited() {
            "unlimited".into()
        } else {
            kb(c.limit_kb)
        };
        let mark = if e.limit_hit.as_deref() == Some(c.name.as_str()) {
            "  <- hit"
        } else {
            ""
        };
        writeln!(
            out,
            "  {:<11} usage {}, limit {limit}, failcnt {}{mark}",
            c.name,
            kb(c.usage_kb),
            c.failcnt
        )?;
    }
    if let Some(i) = &r.invoker {
        let class = e
            .invoker_class
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        let pid = i.pid.map(|p| format!(", pid {p}")).unwrap_or_default();
        let gfp = match (&i.gfp_mask, &i.gfp_flags) {
            (Some(m), Some(f)) => format!(", gfp {m}({f})"),
            (Some(m), None) => format!(", gfp {m}"),
            _ => String::new(),
        };
        let order = i.order.map(|o| format!(", order {o}")).unwrap_or_default();
        writeln!(out, "  invoker     {}{class}{pid}{gfp}{order}", i.comm)?;
    }
    if let Some(v) = &r.victim {
        let class = e
            .victim_class
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        let reaped = match &r.reaped {
            Some(x) => format!("; reaped, now anon-rss {}", kb(x.anon_rss_kb)),
            None => String::new(),
        };
        writeln!(
            out,
            "  victim      {}{class} pid {}: anon-rss {}, file-rss {}, shmem-rss {}, total-vm {}{reaped}",
            v.comm,
            v.pid,
            v.anon_rss_kb.map_or("?".into(), kb),
            v.file_rss_kb.map_or("?".into(), kb),
            v.shmem_rss_kb.map_or("?".into(), kb),
            v.total_vm_kb.map_or("?".into(), kb)
        )?;
        if let Some(group) = &r.oom_group {
            writeln!(
                out,
                "  group kill  memory.oom.group of {group}: {} more killed",
                r.group_victims.len()
            )?;
            for g in &r.group_victims {
                writeln!(
                    out,
                    "              {} pid {}: anon-rss {}, file-rss {}",
                    g.comm,
                    g.pid,
                    g.anon_rss_kb.map_or("?".into(), kb),
                    g.file_rss_kb.map_or("?".into(), kb)
                )?;
            }
        }
    } else if let Some(n) = &r.named_victim {
        let class = e
            .victim_class
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        writeln!(
            out,
            "  victim      {}{class} pid {} (named by its {} line; the log has no Killed line)",
            n.comm, n.pid, n.from
        )?;
    }
    if let Some(k) = &e.kinds {
        crate::render::kinds_line(out, k)?;
    }
    if let (Some(g), Some(o)) = (e.guest_ram, e.overhead) {
        writeln!(
            out,
            "  guest RAM   {} (qemu anon-rss); everything else {}",
            b(g),
            b(o)
        )?;
    }
    if !e.classes.is_empty() {
        let list: Vec<String> = e
            .classes
            .iter()
            .map(|c| format!("{} {} ({})", c.class, b(c.rss), c.processes))
            .collect();
        writeln!(out, "  by class    {}", list.join(" · "))?;
        writeln!(
            out,
            "  tasks       {:>8}  {:<16} {:<22} {:>10}",
            "pid", "name", "class", "rss"
        )?;
        let mut tasks: Vec<_> = e.tasks.iter().collect();
        tasks.sort_by_key(|t| std::cmp::Reverse(t.rss));
        for t in tasks.iter().take(12) {
            writeln!(
                out,
                "              {:>8}  {:<16} {:<22} {:>10}",
                t.pid,
                t.name,
                t.class.name(),
                b(t.rss)
            )?;
        }
        if tasks.len() > 12 {
            writeln!(out, "              ... {} more", tasks.len() - 12)?;
        }
    }
    for c in &e.causes {
        writeln!(out, "  cause       {c}")?;
    }
    if !e.budget.is_empty() {
        writeln!(
            out,
            "  budget      {:<22} {:>10} {:>10}",
            "KubeVirt item", "reserved", "observed"
        )?;
        for l in &e.budget {
            let over = if l.over { "  OVER" } else { "" };
            writeln!(
                out,
                "              {:<22} {:>10} {:>10}{over}",
                l.item,
                b(l.reserved),
                b(l.observed)
            )?;
        }
    }
    if let Some(a) = &e.advice {
        writeln!(
            out,
            "  advice      overhead at the kill was {} against KubeVirt's {}: an additional-guest-memory-overhead-ratio of {:.1} or a pod limit of {} would have held it (the seed's table reserves {} for this guest size)",
            b(a.observed_overhead),
            b(a.kubevirt_overhead),
            a.ratio_needed,
            b(a.limit_needed),
            b(a.seed_table_overhead)
        )?;
    } else if e.oom_kind == "memcg" && e.victim_class.is_some_and(|c| c.is_qemu()) {
        writeln!(
            out,
            "  advice      pass --guest-memory (the VM's memory.guest) to weigh the overhead against KubeVirt's budget"
        )?;
    }
    for w in &e.warnings {
        writeln!(out, "  warning     {w}")?;
    }
    if r.tasks_dropped > 0 {
        writeln!(
            out,
            "  warning     {} task rows beyond {} were not kept",
            r.tasks_dropped,
            super::parse::MAX_TASKS
        )?;
    }
    writeln!(out)
}
