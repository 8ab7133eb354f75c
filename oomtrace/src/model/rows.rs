//! What the model hands to the views: one row per change, and the final summary.
use serde::Serialize;

use super::views::PostMortem;
use crate::kubevirt::ThreadClass;

/// What changed, ready to be shown. Serialized as one JSON object per line by `tail --json`.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    Charge(ChargeRow),
    Oom(OomRow),
    /// A further victim of a memory.oom.group kill: the OOM is the one at `oom_ts_ns`.
    OomGroupVictim(OomGroupVictimRow),
    Reclaim(ReclaimRow),
    Exit(ExitRow),
    OomAttempt(OomAttemptRow),
    Exec(ExecRow),
    KillSignal(KillSignalRow),
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ChargeRow {
    pub ts_ns: u64,
    pub memcg: String,
    pub memcg_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub process: String,
    pub class: ThreadClass,
    /// Bytes charged since the previous row of this thread (negative: uncharged).
    pub delta: i64,
    /// Net bytes this thread has charged to this memcg since oomtrace started.
    pub total: i64,
    pub anon: i64,
    pub file: i64,
    /// Of `file`: shmem (tmpfs, memfd, shared anonymous memory); None where the charge hook
    /// cannot tell it from page cache (the kernel-function tiers, captures before it).
    pub shmem: Option<i64>,
    /// Socket buffers (cgroup v2, tracepoint tier; None where not counted). Charged while a
    /// task of another memcg ran (a receive in softirq), they are the memcg's `[interrupt]`
    /// row's.
    pub sock: Option<i64>,
    pub kernel: i64,
    pub guest: i64,
    pub usage: Option<u64>,
    pub limit: Option<u64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OomRow {
    pub ts_ns: u64,
    /// The memcg whose limit was hit (best knowledge: see `oom_memcg`).
    pub memcg: String,
    pub memcg_id: u64,
    /// How `memcg` is known: "kernel" (the OOM's own memcg, kernel-function tier), "invoker"
    /// (the invoker's memcg read from its task at the kill, then its deepest limited ancestor
    /// at the limit), "charges" (the memcg it charged last: older captures and kernels whose
    /// BTF does not give the way).
    pub memcg_source: &'static str,
    /// The invoker's own memcg at the kill (from its task), when the kernel told.
    pub invoker_memcg: Option<String>,
    pub usage: Option<u64>,
    pub limit: Option<u64>,
    pub invoker_pid: u32,
    pub invoker_tid: u32,
    pub invoker_comm: String,
    pub invoker_process: String,
    pub invoker_class: ThreadClass,
    pub victim_pid: u32,
    pub victim_comm: String,
    pub victim_class: ThreadClass,
    pub victim_total_vm_kb: u64,
    pub victim_anon_rss_kb: u64,
    pub victim_file_rss_kb: u64,
    pub victim_shmem_rss_kb: u64,
    pub victim_pgtables_kb: u64,
    pub victim_oom_score_adj: i32,
    /// Bytes oomtrace attributed to the victim's threads before the kill.
    pub victim_charged: i64,
    /// The anonymous part: what the kernel's anon-rss of the victim counts. (The net total also
    /// holds page cache the victim's threads freed by direct reclaim at the limit, as negative.)
    pub victim_charged_anon: i64,
    /// What grew before the kill, by class, process and thread (boxed: rows stay small).
    pub post_mortem: Option<Box<PostMortem>>,
    /// memory.oom.group: the memcg whose every task the kernel killed in this OOM (the victim
    /// above is the one it chose); None: a kill of one process, or not known on this kernel.
    pub group: Option<String>,
    #[serde(skip)]
    pub group_memcg_id: u64,
    /// The start of the memcg OOM that made this kill (kernel-function tier; 0: not known).
    #[serde(skip)]
    pub oom_start_ns: u64,
    /// The group's other tasks killed with the victim, in the kernel's order.
    pub group_victims: Vec<GroupVictim>,
}

/// A task killed with the chosen victim of a memory.oom.group kill.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GroupVictim {
    pub ts_ns: u64,
    pub pid: u32,
    pub comm: String,
    pub class: ThreadClass,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    /// Bytes oomtrace attributed to its threads before the kill.
    pub charged: i64,
}

/// A further victim of the group kill of the OOM at `oom_ts_ns` (that OOM's row holds it too).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OomGroupVictimRow {
    pub oom_ts_ns: u64,
    pub invoker_tid: u32,
    pub group: String,
    pub victim: GroupVictim,
}

/// One memcg OOM from start to end (kernel-function tier): including the ones that killed
/// nothing, which leave no mark_victim and often no kernel report either.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OomAttemptRow {
    pub ts_ns: u64,
    pub memcg: String,
    pub memcg_id: u64,
    pub usage: Option<u64>,
    pub limit: Option<u64>,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub process: String,
    pub class: ThreadClass,
    pub order: i32,
    pub duration_ns: u64,
    pub killed: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ReclaimRow {
    pub ts_ns: u64,
    pub memcg: String,
    pub memcg_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub process: String,
    pub duration_ns: u64,
    pub nr_reclaimed: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ExitRow {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub process: String,
    pub group_dead: bool,
}

/// A process sent SIGKILL or SIGTERM to a tracked process: a kill that is not the kernel's OOM
/// killer (kubelet evicting, a userspace OOM killer, a runtime stopping a container, a shell).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct KillSignalRow {
    pub ts_ns: u64,
    /// "SIGKILL" or "SIGTERM".
    pub signal: &'static str,
    pub sender_pid: u32,
    pub sender_tid: u32,
    pub sender_comm: String,
    /// What the sender is, from its name: "kubelet", "container runtime", "userspace OOM
    /// killer", "KubeVirt", "systemd" or "other".
    pub sender_kind: &'static str,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub process: String,
    pub class: ThreadClass,
    /// The memcg the target charged last, its usage and limit at the signal.
    pub memcg: String,
    pub memcg_id: u64,
    pub usage: Option<u64>,
    pub limit: Option<u64>,
    /// The pod's memcg (the target's, or an ancestor of it), when the path names a pod.
    pub pod_memcg_id: Option<u64>,
    /// The kernel's word on it: "delivered", "ignored", "already pending" or "queue full".
    pub result: &'static str,
}

/// A tracked thread exec'd: its name from now on, the name it had, and where it runs now.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ExecRow {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub old_comm: String,
    /// Its memcg at the exec, as the kernel says (empty when this kernel does not tell).
    pub memcg: String,
    pub memcg_id: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ThreadSummary {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub process: String,
    pub class: ThreadClass,
    pub memcg: String,
    pub total: i64,
    pub peak: i64,
    pub anon: i64,
    pub file: i64,
    /// Of `file` (None: not told apart, as in `ChargeRow`).
    pub shmem: Option<i64>,
    /// As in `ChargeRow`.
    pub sock: Option<i64>,
    pub kernel: i64,
    pub guest: i64,
    pub exited: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ProcessSummary {
    pub pid: u32,
    pub process: String,
    pub class: ThreadClass,
    pub total: i64,
    /// The highest net total the process reached (what it held before an OOM kill freed it).
    pub peak: i64,
    pub anon: i64,
    pub file: i64,
    /// Of `file` (None: not told apart, as in `ChargeRow`).
    pub shmem: Option<i64>,
    /// As in `ChargeRow`.
    pub sock: Option<i64>,
    pub kernel: i64,
    pub guest: i64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Counters {
    pub events: u64,
    pub ring_drops: u64,
    pub rare_drops: u64,
    pub map_full: u64,
    pub decode_errors: u64,
    /// fentry/fexit runs the kernel skipped (the program was already active on the CPU).
    pub skipped_runs: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub counters: Counters,
    pub processes: Vec<ProcessSummary>,
    pub threads: Vec<ThreadSummary>,
    pub ooms: Vec<OomRow>,
    /// Limits, headroom and per-class bytes of the memcgs that were charged.
    pub memcgs: Vec<super::views::MemcgView>,
    /// Why the capture being written is incomplete (a full disk): the run's numbers stand,
    /// its file lacks what came after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_error: Option<String>,
}
