//! One kernel OOM report as the log text gave it: every field it holds, nothing inferred.
//! Field names follow the kernel's words and `tail --json` (docs/json-schema.md).
use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Invoker {
    /// The thread that hit the limit ("CPU 11/KVM", "virt-launcher").
    pub comm: String,
    pub pid: Option<u32>,
    pub cpu: Option<u32>,
    pub gfp_mask: Option<String>,
    pub gfp_flags: Option<String>,
    pub order: Option<i32>,
    pub oom_score_adj: Option<i32>,
}

/// "memory: usage 17024340kB, limit 17024340kB, failcnt 1243" (also memory+swap, swap, kmem).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Counter {
    pub name: String,
    pub usage_kb: u64,
    pub limit_kb: u64,
    pub failcnt: u64,
}

impl Counter {
    /// The kernel prints PAGE_COUNTER_MAX (in kB) for "no limit".
    pub fn unlimited(&self) -> bool {
        self.limit_kb >= (1 << 50)
    }
    /// Usage within `slack_kb` of the limit: the charge that failed was at most that big (a
    /// batch of 64 pages, a huge page), so usage can sit that far below the limit at the report.
    pub fn at_limit(&self, slack_kb: u64) -> bool {
        !self.unlimited() && self.usage_kb + slack_kb >= self.limit_kb
    }
}

/// One row of the "Tasks state (memory values in pages)" table.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Task {
    pub pid: u32,
    pub uid: Option<u32>,
    pub tgid: Option<u32>,
    pub total_vm_pages: Option<u64>,
    pub rss_pages: Option<u64>,
    pub rss_anon_pages: Option<u64>,
    pub rss_file_pages: Option<u64>,
    pub rss_shmem_pages: Option<u64>,
    pub pgtables_bytes: Option<u64>,
    pub swapents: Option<u64>,
    pub oom_score_adj: Option<i32>,
    pub name: String,
}

/// "Killed process 24790 (qemu-system-x86) total-vm:..kB, anon-rss:..kB, ...".
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Victim {
    pub pid: u32,
    pub comm: String,
    /// None: the line was cut (or wrapped) before the figure.
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub uid: Option<u32>,
    pub pgtables_kb: Option<u64>,
    pub oom_score_adj: Option<i32>,
    /// "Memory cgroup out of memory" or "Out of memory".
    pub reason: Option<String>,
    /// Where the line ends early: "inside its name" or "before its figures" (a cut log, a
    /// wrapped paste); None: whole.
    pub line_cut: Option<&'static str>,
}

/// The victim as a line before the Killed line names it ("oom-kill:...,task=NAME,pid=N" since
/// 4.19, "Kill process N (NAME) score S or sacrifice child" before): what a report cut before
/// its Killed line still says of who was killed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NamedVictim {
    pub pid: u32,
    pub comm: String,
    /// The line that named it: "oom-kill" or "Kill process".
    pub from: &'static str,
    /// What a "Kill process" line said before it: "Memory cgroup out of memory" or "Out of
    /// memory" (the kind of OOM, when no constraint line says).
    pub reason: Option<String>,
}

/// "oom_reaper: reaped process 24790 (qemu-system-x86), now anon-rss:0kB, ...".
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Reaped {
    pub pid: u32,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OomReport {
    /// 1-based line of the input where the report starts.
    pub first_line: u64,
    pub time: Option<String>,
    pub invoker: Option<Invoker>,
    pub kernel_version: Option<String>,
    pub constraint: Option<String>,
    pub oom_memcg: Option<String>,
    pub task_memcg: Option<String>,
    pub counters: Vec<Counter>,
    /// The cgroup "Memory cgroup stats for <path>:" names, and its stats in bytes.
    pub stats_memcg: Option<String>,
    pub stats: BTreeMap<String, u64>,
    pub tasks: Vec<Task>,
    /// Rows beyond the bound oomtrace keeps per report.
    pub tasks_dropped: u64,
    pub victim: Option<Victim>,
    /// "Out of memory and no killable processes...": the OOM killer found nothing to kill.
    pub nothing_killable: bool,
    /// memory.oom.group: the cgroup whose every task was killed with the victim.
    pub oom_group: Option<String>,
    /// The tasks killed with the victim (their own Killed lines), in the log's order.
    pub group_victims: Vec<Victim>,
    /// The victim as an earlier line named it (the only word on it when the Killed line is cut).
    pub named_victim: Option<NamedVictim>,
    pub reaped: Option<Reaped>,
    /// The call trace runs through the memcg OOM path (mem_cgroup_out_of_memory): the kind of
    /// OOM when a fragment holds nothing else that says.
    pub memcg_in_trace: bool,
    /// The log holds only part of the report.
    pub truncated_start: bool,
    pub truncated_end: bool,
    pub warnings: Vec<String>,
}

impl OomReport {
    pub fn counter(&self, name: &str) -> Option<&Counter> {
        self.counters.iter().find(|c| c.name == name)
    }

    /// v1 prints memory+swap and kmem lines; v2 prints swap (and v2-only stats keys).
    pub fn cgroup_version(&self) -> Option<u8> {
        if self.counter("memory+swap").is_some() || self.counter("kmem").is_some() {
            Some(1)
        } else if self.counter("swap").is_some()
            || (self.counter("memory").is_some() && self.stats.contains_key("anon"))
        {
            Some(2)
        } else {
            None
        }
    }
}
