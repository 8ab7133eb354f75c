//! What a parsed OOM report means for a VM pod: which limit, whose pod, which classes held the
//! memory, guest RAM against overhead, notable causes and the reservation that would have held.
use std::collections::BTreeMap;

use serde::Serialize;

use super::report::OomReport;
use crate::{
    kubevirt::{
        ThreadClass, budget, classify_process, classify_thread_comm,
        cmdline::VmFacts,
        identity::{self, PodIdentity},
    },
    model::kinds::KindsView,
    output::bytes,
};

/// The kernel's task table counts pages; every kernel whose reports we read uses 4 KiB pages
/// on x86_64 (the only architecture KubeVirt nodes here run).
pub const PAGE: u64 = 4096;

/// What the user told us, or the log showed, about the VM.
#[derive(Clone, Debug, Default)]
pub struct Hints {
    pub vm: VmFacts,
    pub constants: Option<budget::Constants>,
    pub ratio: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TaskView {
    pub pid: u32,
    pub name: String,
    pub class: ThreadClass,
    pub rss: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassView {
    pub class: ThreadClass,
    pub rss: u64,
    pub processes: usize,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BudgetLine {
    pub item: &'static str,
    pub reserved: u64,
    pub observed: u64,
    pub over: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Advice {
    /// Overhead (everything but guest RAM) the pod held at the kill.
    pub observed_overhead: u64,
    /// KubeVirt's own overhead for this VM at ratio 1.0.
    pub kubevirt_overhead: u64,
    /// The smallest additional-guest-memory-overhead-ratio covering the observed overhead.
    pub ratio_needed: f64,
    /// The smallest pod limit for this guest size that holds guest RAM plus this overhead.
    pub limit_needed: u64,
    /// The seed's proposed reserved memory for this guest size, plus KubeVirt's overhead.
    pub seed_table_overhead: u64,
}

/// One explained report. The flat fields share their names with `tail --json`'s "oom" rows.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Explanation {
    #[serde(rename = "type")]
    pub kind_tag: &'static str,
    pub summary: String,
    pub time: Option<String>,
    /// "memcg", "global", "cpuset", "mempolicy" or "unknown".
    pub oom_kind: &'static str,
    pub memcg: Option<String>,
    pub task_memcg: Option<String>,
    /// "memory", "memory+swap" (cgroup v1) or none known.
    pub limit_hit: Option<String>,
    pub usage: Option<u64>,
    pub limit: Option<u64>,
    pub cgroup_version: Option<u8>,
    pub pod: Option<PodIdentity>,
    pub vm: Option<String>,
    pub invoker_pid: Option<u32>,
    pub invoker_comm: Option<String>,
    pub invoker_class: Option<ThreadClass>,
    pub victim_pid: Option<u32>,
    pub victim_comm: Option<String>,
    pub victim_class: Option<ThreadClass>,
    pub victim_total_vm_kb: Option<u64>,
    pub victim_anon_rss_kb: Option<u64>,
    pub victim_file_rss_kb: Option<u64>,
    pub victim_shmem_rss_kb: Option<u64>,
    pub victim_pgtables_kb: Option<u64>,
    pub victim_oom_score_adj: Option<i32>,
    pub tasks: Vec<TaskView>,
    /// What kind of memory the memcg held at the kill (the report's memory stats).
    pub kinds: Option<KindsView>,
    pub classes: Vec<ClassView>,
    /// qemu's anonymous memory, capped at the guest size when known: the RAM the guest faulted in.
    pub guest_ram: Option<u64>,
    pub overhead: Option<u64>,
    pub causes: Vec<String>,
    pub budget: Vec<BudgetLine>,
    pub advice: Option<Advice>,
    pub warnings: Vec<String>,
    pub report: OomReport,
}

fn kind(r: &OomReport) -> &'static str {
    match r.constraint.as_deref() {
        Some("CONSTRAINT_MEMCG") => "memcg",
        Some("CONSTRAINT_NONE") => "global",
        Some("CONSTRAINT_CPUSET") => "cpuset",
        Some("CONSTRAINT_MEMORY_POLICY") => "mempolicy",
        _ => {
            let reason = r
                .victim
                .as_ref()
                .and_then(|v| v.reason.as_deref())
                .or_else(|| r.named_victim.as_ref().and_then(|n| n.reason.as_deref()));
            if reason.is_some_and(|s| s.starts_with("Memory cgroup")) || r.oom_memcg.is_some() {
                "memcg"
            } else if reason.is_some_and(|s| s.contains("ut of memory")) {
                "global"
            } else if r.counter("memory").is_some() || r.memcg_in_trace {
                "memcg"
            } else {
                "unknown"
            }
        }
    }
}

/// The limit that stopped the charge: the one at its limit. When both are (v1 with swap
/// accounting), memory+swap where swap is in use (its usage is above memory's: the memsw limit
/// is what binds) or where it failed more often (v1 charges memory+swap first); else memory:
/// with no swap in use both count the same pages, and memory is the limit people set.
fn limit_hit(r: &OomReport) -> Option<&super::report::Counter> {
    let slack = charge_slack_kb(r);
    let mem = r.counter("memory").filter(|c| c.at_limit(slack));
    let memsw = r.counter("memory+swap").filter(|c| c.at_limit(slack));
    match (mem, memsw) {
        (Some(m), Some(s)) => Some(if s.usage_kb > m.usage_kb || s.failcnt > m.failcnt {
            s
        } else {
            m
        }),
        (m, s) => m.or(s),
    }
}

/// How far below its limit a memcg can be when a charge fails: the request (2^order pages, or
/// a 2 MiB huge page) plus the charge batch of 64 pages, in kB.
fn charge_slack_kb(r: &OomReport) -> u64 {
    let order = r
        .invoker
        .as_ref()
        .and_then(|i| i.order)
        .unwrap_or(0)
        .clamp(0, 20) as u32;
    (4u64 << order).max(2048) + 256
}

/// What kind of memory the memcg held at the kill, from the stats the report printed, by their
/// keys (6.x prints v2's memory.stat keys on cgroup v1 too): v2's (anon, file, ...), else v1's
/// (with total_ keys, or, before, the memcg's own, aliased as its totals).
fn report_kinds(r: &OomReport) -> Option<KindsView> {
    use crate::{cgroupfs::Version, memory_stat::MemoryStat};
    let version = if r.stats.contains_key("anon") {
        Version::V2
    } else {
        Version::V1
    };
    let mut text = String::new();
    for (k, v) in &r.stats {
        text.push_str(&format!("{k} {v}\n"));
        if version == Version::V1 && !r.stats.contains_key("total_rss") {
            text.push_str(&format!("total_{k} {v}\n"));
        }
    }
    let kmem = r.counter("kmem").map(|c| c.usage_kb.saturating_mul(1024));
    let stat = MemoryStat::parse(version, &text, kmem)?;
    Some(crate::model::kinds::kinds_at(&stat, "OOM report"))
}

fn stat(r: &OomReport, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| r.stats.get(*k).copied())
}

pub fn explain(r: OomReport, hints: &Hints) -> Explanation {
    let oom_kind = kind(&r);
    let hit = limit_hit(&r).cloned();
    let memory = r.counter("memory").cloned();
    let usage = hit.as_ref().or(memory.as_ref()).map(|c| c.usage_kb * 1024);
    let limit = hit
        .as_ref()
        .or(memory.as_ref())
        .filter(|c| !c.unlimited())
        .map(|c| c.limit_kb * 1024);
    let memcg = r.oom_memcg.clone().or_else(|| r.stats_memcg.clone());
    let pod = memcg.as_deref().and_then(identity::parse);

    let tasks: Vec<TaskView> = r
        .tasks
        .iter()
        .map(|t| TaskView {
            pid: t.pid,
            name: t.name.clone(),
            class: classify_process(&t.name),
            rss: t.rss_pages.unwrap_or(0) * PAGE,
        })
        .collect();
    let mut per_class: BTreeMap<ThreadClass, (u64, usize)> = BTreeMap::new();
    for t in &tasks {
        let e = per_class.entry(t.class).or_default();
        e.0 += t.rss;
        e.1 += 1;
    }
    let mut classes: Vec<ClassView> = per_class
        .into_iter()
        .map(|(class, (rss, processes))| ClassView {
            class,
            rss,
            processes,
        })
        .collect();
    classes.sort_by_key(|c| std::cmp::Reverse(c.rss));

    // Guest RAM: qemu's anonymous memory (the victim line is exact; else its task row).
    let qemu_victim = r
        .victim
        .as_ref()
        .filter(|v| classify_process(&v.comm).is_qemu());
    let qemu_anon = qemu_victim
        .and_then(|v| v.anon_rss_kb)
        .map(|kb| kb * 1024)
        .or_else(|| {
            tasks
                .iter()
                .filter(|t| t.class.is_qemu())
                .map(|t| t.rss)
                .max()
        });
    let guest_ram = qemu_anon.map(|a| hints.vm.guest_memory.map_or(a, |g| a.min(g)));
    let overhead = match (usage, guest_ram) {
        (Some(u), Some(g)) => Some(u.saturating_sub(g)),
        _ => None,
    };

    let causes = causes(&r, &tasks, usage);
    let (budget, advice) = budget_and_advice(&tasks, hints, usage, guest_ram);
    let vm = hints.vm.display_name();
    let invoker_class = r.invoker.as_ref().map(|i| classify_thread_comm(&i.comm));
    let v = r.victim.as_ref();
    // Cut before its Killed line: an earlier line still names the victim (no sizes).
    let named = r.named_victim.as_ref().filter(|_| v.is_none());
    let mut e = Explanation {
        kind_tag: "oom_report",
        summary: String::new(),
        time: r.time.clone(),
        oom_kind,
        memcg,
        task_memcg: r.task_memcg.clone(),
        limit_hit: hit.map(|c| c.name),
        usage,
        limit,
        cgroup_version: r.cgroup_version(),
        pod,
        vm,
        invoker_pid: r.invoker.as_ref().and_then(|i| i.pid),
        invoker_comm: r.invoker.as_ref().map(|i| i.comm.clone()),
        invoker_class,
        victim_pid: v.map(|v| v.pid).or(named.map(|n| n.pid)),
        victim_comm: v.map(|v| v.comm.clone()).or(named.map(|n| n.comm.clone())),
        victim_class: v
            .map(|v| v.comm.as_str())
            .or(named.map(|n| n.comm.as_str()))
            .map(classify_process),
        victim_total_vm_kb: v.and_then(|v| v.total_vm_kb),
        victim_anon_rss_kb: v.and_then(|v| v.anon_rss_kb),
        victim_file_rss_kb: v.and_then(|v| v.file_rss_kb),
        victim_shmem_rss_kb: v.and_then(|v| v.shmem_rss_kb),
        victim_pgtables_kb: v.and_then(|v| v.pgtables_kb),
        victim_oom_score_adj: v.and_then(|v| v.oom_score_adj),
        tasks,
        kinds: report_kinds(&r),
        classes,
        guest_ram,
        overhead,
        causes,
        budget,
        advice,
        warnings: r.warnings.clone(),
        report: r,
    };
    e.summary = summary(&e);
    e
}

fn causes(r: &OomReport, tasks: &[TaskView], usage: Option<u64>) -> Vec<String> {
    let mut out = Vec::new();
    let pct = |part: u64, whole: u64| part as f64 * 100.0 / whole.max(1) as f64;
    let anon = stat(r, &["anon", "total_rss", "rss"]);
    let thp = stat(r, &["anon_thp", "total_rss_huge", "rss_huge"]);
    if let (Some(a), Some(t)) = (anon, thp)
        && a > 0
        && pct(t, a) >= 25.0
    {
        out.push(format!(
            "transparent huge pages are {:.0}% of anonymous memory ({}): one touched byte charges 2 MiB",
            pct(t, a),
            bytes(t as i64)
        ));
    }
    if let Some(u) = usage {
        let kernel = stat(r, &["kernel"])
            .or_else(|| r.counter("kmem").map(|k| k.usage_kb * 1024))
            .unwrap_or(0);
        if pct(kernel, u) >= 5.0 {
            out.push(format!(
                "kernel memory is {:.0}% of usage ({})",
                pct(kernel, u),
                bytes(kernel as i64)
            ));
        }
        let sock = stat(r, &["sock"]).unwrap_or(0);
        if pct(sock, u) >= 1.0 {
            out.push(format!("socket buffers hold {}", bytes(sock as i64)));
        }
        let file = stat(r, &["file", "total_cache", "cache"]).unwrap_or(0);
        if pct(file, u) >= 10.0 {
            out.push(format!(
                "page cache is {:.0}% of usage ({})",
                pct(file, u),
                bytes(file as i64)
            ));
        }
    }
    for t in tasks
        .iter()
        .filter(|t| t.class == ThreadClass::Foreign && t.rss >= 1 << 20)
    {
        out.push(format!(
            "{} (pid {}) is not part of KubeVirt and held {} in the pod",
            t.name,
            t.pid,
            bytes(t.rss as i64)
        ));
    }
    if r.counter("memory+swap")
        .is_some_and(|c| c.at_limit(charge_slack_kb(r)) && c.failcnt > 0)
    {
        out.push("the memory+swap limit (memsw) was hit, not only the memory limit".into());
    }
    out
}

fn budget_and_advice(
    tasks: &[TaskView],
    hints: &Hints,
    usage: Option<u64>,
    guest_ram: Option<u64>,
) -> (Vec<BudgetLine>, Option<Advice>) {
    let Some(guest_memory) = hints.vm.guest_memory else {
        return (Vec::new(), None);
    };
    let vm = budget::VmShape {
        guest_memory,
        vcpus: hints.vm.vcpus.unwrap_or(1),
        graphics: true,
    };
    let constants = hints.constants.unwrap_or(budget::KUBEVIRT_CURRENT);
    let b = budget::compute(&vm, &constants, hints.ratio.unwrap_or(1.0));
    let lines = b
        .items
        .iter()
        .map(|item| {
            let mut observed: u64 = tasks
                .iter()
                .filter(|t| item.classes.contains(&t.class))
                .map(|t| t.rss)
                .sum();
            if item.classes.contains(&ThreadClass::QemuOther) {
                // qemu's rss holds the guest RAM; its overhead is the rest.
                observed = observed.saturating_sub(guest_ram.unwrap_or(0));
            }
            BudgetLine {
                item: item.name,
                reserved: item.reserved,
                observed,
                over: observed > item.reserved,
            }
        })
        .collect();
    let advice = usage.map(|u| {
        let observed_overhead = u.saturating_sub(guest_ram.unwrap_or(0));
        let base = budget::compute(&vm, &constants, 1.0).total;
        let ratio = observed_overhead as f64 / base.max(1) as f64;
        Advice {
            observed_overhead,
            kubevirt_overhead: base,
            ratio_needed: (ratio * 10.0).ceil() / 10.0,
            limit_needed: guest_memory + observed_overhead,
            seed_table_overhead: base + budget::seed_reserved_table(guest_memory),
        }
    });
    (lines, advice)
}

fn summary(e: &Explanation) -> String {
    let whose = match (&e.pod, &e.vm) {
        (_, Some(vm)) => format!(" of VM {vm}"),
        (Some(p), None) => format!(" in {}", identity::describe(p)),
        _ => String::new(),
    };
    let head = match e.oom_kind {
        "memcg" => format!("Memory cgroup OOM{whose}"),
        "global" => "System-wide OOM (no cgroup limit involved)".into(),
        "cpuset" => {
            "OOM in a cpuset (the memory nodes it may use are full, not the machine)".into()
        }
        "mempolicy" => {
            "OOM under a NUMA memory policy (its bound nodes are full, not the machine)".into()
        }
        k => format!("OOM ({k}){whose}"),
    };
    let who = match (&e.invoker_comm, e.invoker_class) {
        (Some(c), Some(cl)) => format!("{c} ({cl})"),
        _ => "an unknown thread".into(),
    };
    let what = match (&e.limit_hit, e.limit) {
        (Some(l), Some(b)) => format!("hit the {l} limit of {}", bytes(b as i64)),
        (None, Some(b)) => format!("charged memory at the {} limit", bytes(b as i64)),
        _ => "asked for memory".into(),
    };
    let victim = match (&e.victim_comm, e.victim_pid, e.victim_anon_rss_kb) {
        (Some(c), Some(p), Some(a)) => {
            let guest = match (
                e.victim_class.is_some_and(ThreadClass::is_qemu),
                e.guest_ram,
            ) {
                (true, Some(g)) if g != a * 1024 => format!(", guest RAM {}", bytes(g as i64)),
                _ => String::new(),
            };
            format!(
                "{c} (pid {p}, anon-rss {}{guest}) was killed",
                bytes(a as i64 * 1024)
            )
        }
        (Some(c), Some(p), None) if e.report.victim.is_some() => {
            format!("{c} (pid {p}) was killed (its Killed line is cut before the figures)")
        }
        (Some(c), Some(p), None) => {
            format!("{c} (pid {p}) was chosen to be killed (the log ends before its Killed line)")
        }
        _ if e.report.nothing_killable => "the OOM killer found no process it could kill".into(),
        _ => "the log does not say who was killed".into(),
    };
    let mut s = format!("{head}: {who} {what}; {victim}");
    if let Some(group) = &e.report.oom_group {
        let others = &e.report.group_victims;
        let list: Vec<String> = others
            .iter()
            .take(5)
            .map(|v| format!("{} (pid {})", v.comm, v.pid))
            .collect();
        let more = others.len().saturating_sub(list.len());
        s.push_str(&format!(
            ", and with it {} more task{} of {group} (memory.oom.group){}{}{}",
            others.len(),
            if others.len() == 1 { "" } else { "s" },
            if list.is_empty() { "" } else { ": " },
            list.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    let foreign: Vec<&TaskView> = e
        .tasks
        .iter()
        .filter(|t| t.class == ThreadClass::Foreign && t.rss >= 1 << 20)
        .collect();
    if !foreign.is_empty() {
        let list: Vec<String> = foreign
            .iter()
            .map(|t| format!("{} {}", t.name, bytes(t.rss as i64)))
            .collect();
        s.push_str(&format!(
            "; processes foreign to KubeVirt held {}",
            list.join(", ")
        ));
    }
    s.push('.');
    if let Some(k) = &e.kinds {
        s.push_str(&crate::model::kinds::sentence(k, "the memcg"));
    }
    s
}
