//! Event and map layouts shared by the eBPF programs and userspace, defined once.
//!
//! Every ring-buffer record starts with a `u32` kind (one of the `KIND_*` constants) so that userspace
//! can tell the records apart before it looks at the rest. All structs are `#[repr(C)]` with explicit
//! padding, so both sides agree on the bytes without any compiler guesswork.
#![no_std]

/// Coalesced charge totals of one (thread, memcg) pair.
pub const KIND_CHARGE: u32 = 1;
/// An OOM victim was chosen (oom:mark_victim); sent by the thread that invoked the OOM killer.
pub const KIND_OOM_VICTIM: u32 = 2;
/// A memcg reclaim pass ended (vmscan:mm_vmscan_memcg_reclaim_end): the memcg hit its limit.
pub const KIND_RECLAIM: u32 = 4;
/// A thread that charged a watched memcg exited (sched:sched_process_exit).
pub const KIND_THREAD_EXIT: u32 = 5;
/// A memcg OOM ran to its end (mem_cgroup_out_of_memory entry and return): when, how long,
/// and whether the OOM killer found something to kill.
pub const KIND_OOM_ATTEMPT: u32 = 6;
/// A thread that oomtrace tracks (or that runs in a watched memcg) exec'd a new program
/// (sched:sched_process_exec): its name, executable and command line changed.
pub const KIND_EXEC: u32 = 7;
/// A process sent SIGKILL or SIGTERM to a thread oomtrace tracks (signal:signal_generate, the
/// kernel's own signals left out): a kill that was not the OOM killer's (kubelet, a userspace
/// OOM killer, a shell).
pub const KIND_KILL_SIGNAL: u32 = 8;

pub const COMM_LEN: usize = 16;

/// Indexes into the per-CPU `STATS` array.
pub mod stat {
    /// Ring-buffer reservations that failed: an event was lost (its totals are not: they stay in
    /// the charge map and are read by the next sweep).
    pub const RING_DROPS: u32 = 0;
    /// The charge map was full, so a (thread, memcg) pair could not be tracked at all.
    pub const MAP_FULL: u32 = 1;
    // 2 was the charge runs that did work, counted on every charge and never read: gone from
    // the hot path, the slot kept so the others keep their indexes.
    /// Records written to the ring buffer.
    pub const EVENTS: u32 = 3;
    /// Rare events (OOM, reclaim, exit) lost because the ring buffer was full.
    pub const RARE_DROPS: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// Net bytes charged, by kind, cumulative since the pair was first seen. Net: uncharges made by the
/// same thread (munmap, exit) subtract.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct ChargeTotals {
    /// Anonymous memory (NR_ANON_MAPPED), including THP.
    pub anon: i64,
    /// Page cache and shmem (NR_FILE_PAGES).
    pub file: i64,
    /// Kernel memory charged to the memcg: page tables, KVM secondary page tables, kernel stacks, slab.
    pub kernel: i64,
    /// The part of `anon` and `shmem` that is guest RAM: charged while the thread served a KVM
    /// guest page fault, or a user page fault inside a qemu guest RAM mapping (memfd-backed
    /// guest RAM is shmem).
    pub guest: i64,
    /// The part of `file` that is shmem: tmpfs, memfd, shared anonymous memory (NR_SHMEM). Only
    /// the tracepoint programs see it (`CHARGE_SHMEM_COUNTED`).
    pub shmem: i64,
    /// Socket buffers (MEMCG_SOCK, cgroup v2: v1 keeps TCP memory outside the usage), from the
    /// memcg:mod_memcg_state tracepoint (`CHARGE_SOCK_COUNTED`).
    pub sock: i64,
}

impl ChargeTotals {
    /// All charged bytes (anon + file + kernel + sock); `guest` and `shmem` are parts of them.
    pub const fn total(&self) -> i64 {
        self.anon + self.file + self.kernel + self.sock
    }
}

/// `ChargeEvent.flags` / `ChargeValue.flags`: the record is the pair's first.
pub const CHARGE_FIRST: u32 = 1;
/// The program that counted the pair tells shmem from the rest of the page cache (the tracepoint
/// programs, which see NR_SHMEM); without it `shmem` is not a measurement.
pub const CHARGE_SHMEM_COUNTED: u32 = 2;
/// Socket buffers are counted (the memcg:mod_memcg_state program runs, on cgroup v2); without it
/// `sock` is not a measurement.
pub const CHARGE_SOCK_COUNTED: u32 = 4;
/// The tid of the socket-buffer charges made while a task of another memcg ran (a receive in
/// softirq on another pod's thread or an idle CPU): they belong to the charged memcg, not to the
/// task that happened to be interrupted.
pub const INTERRUPT_TID: u32 = 0;

/// Key of the in-kernel charge map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChargeKey {
    pub tid: u32,
    pub _pad: u32,
    pub memcg_id: u64,
}

/// Value of the in-kernel charge map. Only the eBPF side writes it; userspace only reads, so a
/// sweep from userspace never races with an update.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ChargeValue {
    pub totals: ChargeTotals,
    /// `totals.total()` when the last record for this pair was sent.
    pub emitted_total: i64,
    /// When the last record was sent, on the program's flush clock: ticks (jiffies) for the
    /// tracepoint programs, ns for the kernel-function ones.
    pub last_emit: u64,
    pub tgid: u32,
    /// `CHARGE_SHMEM_COUNTED` / `CHARGE_SOCK_COUNTED` when the programs that run count them.
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ChargeEvent {
    pub kind: u32,
    pub tid: u32,
    pub tgid: u32,
    /// `CHARGE_FIRST` when this is the first record of the pair (the map entry was just
    /// created), `CHARGE_SHMEM_COUNTED` and `CHARGE_SOCK_COUNTED` as in the pair's map entry.
    pub flags: u32,
    pub ts_ns: u64,
    pub memcg_id: u64,
    pub totals: ChargeTotals,
    pub comm: [u8; COMM_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomVictimEvent {
    pub kind: u32,
    /// The thread that invoked the OOM killer (current at mark_victim).
    pub invoker_tid: u32,
    pub invoker_tgid: u32,
    pub victim_pid: u32,
    pub ts_ns: u64,
    /// Memory values from the tracepoint, in kB (0 on kernels whose tracepoint only has the pid).
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    pub uid: u32,
    pub oom_score_adj: i32,
    pub invoker_comm: [u8; COMM_LEN],
    pub victim_comm: [u8; COMM_LEN],
    /// The invoker's memory cgroup at the event, read from its task (task → css_set → memory
    /// css → cgroup → kernfs id); 0 when this kernel's BTF does not give the way.
    pub invoker_memcg_id: u64,
    /// The memcg whose OOM this is, from mem_cgroup_out_of_memory's argument (kernel-function
    /// tier of the oom hook); 0 when that hook is not attached.
    pub oom_memcg_id: u64,
    /// memory.oom.group: the highest memcg above the victim (its own included) with oom.group
    /// set, whose every task the kernel kills with it in this OOM; 0: none, or not known here
    /// (only the raw mark_victim program reads the victim's task).
    pub group_memcg_id: u64,
    /// When the mem_cgroup_out_of_memory call that made this kill began (kernel-function tier
    /// of the oom hook; 0: not attached, or a global OOM): kills with the same start are one
    /// OOM (a memory.oom.group kill), whatever this kernel's mark_victim can read.
    pub oom_start_ns: u64,
}

/// A tracked thread exec'd: sent by the thread itself after the new program is loaded, so
/// `comm` is the new name and the ids are the ones it has from now on.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub kind: u32,
    /// The thread's id after exec (the process's id: exec makes the caller the group leader).
    pub tid: u32,
    pub tgid: u32,
    /// Its id before exec (differs when a non-leader thread exec'd).
    pub old_tid: u32,
    pub ts_ns: u64,
    /// Its memory cgroup at the exec (0: unknown on this kernel).
    pub memcg_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// A kill signal sent to a tracked thread, by the sending thread (`current` at the tracepoint).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KillSignalEvent {
    pub kind: u32,
    pub sender_tid: u32,
    pub sender_tgid: u32,
    /// The thread the kernel queued the signal on (a process's leader for kill(2)).
    pub target_tid: u32,
    pub sig: i32,
    /// si_code: SI_USER (0) for kill(2), SI_TKILL (-6) for tgkill, SI_QUEUE (-1) for sigqueue.
    pub code: i32,
    /// The tracepoint's result: 0 delivered, 1 ignored, 2 already pending, 3/4 queue full.
    pub result: i32,
    /// The target's process (0: not known, from the classic tracepoint).
    pub target_tgid: u32,
    pub ts_ns: u64,
    /// The target's memcg: its own (raw tracepoint), else the one it charged last.
    pub target_memcg_id: u64,
    /// That memcg's usage in bytes at the signal (raw tracepoint; u64::MAX: not read).
    pub usage_bytes: u64,
    pub sender_comm: [u8; COMM_LEN],
    pub target_comm: [u8; COMM_LEN],
}

/// One call of mem_cgroup_out_of_memory, sent at its return by the thread that made it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomAttemptEvent {
    pub kind: u32,
    pub tid: u32,
    pub tgid: u32,
    /// The allocation order that failed.
    pub order: i32,
    pub start_ns: u64,
    pub duration_ns: u64,
    pub memcg_id: u64,
    /// 1 when the OOM killer chose a victim or one was already dying (the function returned
    /// true), 0 when it found nothing to kill.
    pub killed: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// What mem_cgroup_out_of_memory's entry left for its return (per thread).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OomStart {
    pub start_ns: u64,
    pub memcg_id: u64,
    pub order: i32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ReclaimEvent {
    pub kind: u32,
    pub tid: u32,
    pub tgid: u32,
    pub _pad: u32,
    pub ts_ns: u64,
    pub duration_ns: u64,
    pub nr_reclaimed: u64,
    /// The watched memcg this thread charged last (the reclaim tracepoints carry no memcg).
    pub memcg_id: u64,
    pub comm: [u8; COMM_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadExitEvent {
    pub kind: u32,
    pub tid: u32,
    pub tgid: u32,
    pub group_dead: u32,
    pub ts_ns: u64,
    pub comm: [u8; COMM_LEN],
}

/// Up to this many guest RAM mappings per qemu process (pc.ram is one; memory backends add more).
pub const GUEST_RANGES: usize = 4;

/// A qemu process's guest RAM mappings, [start, end) in its address space; unused slots are 0..0.
/// A user page fault inside one of them charges guest RAM, whichever thread takes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRanges {
    pub start: [u64; GUEST_RANGES],
    pub end: [u64; GUEST_RANGES],
}

/// Names of the globals userspace injects before loading (values come from the running kernel's
/// BTF and tracefs formats; Rust eBPF has no CO-RE).
pub mod globals {
    pub const FILTER_ON: &str = "FILTER_ON";
    pub const FLUSH_BYTES: &str = "FLUSH_BYTES";
    pub const FLUSH_NS: &str = "FLUSH_NS";
    pub const FLUSH_JIFFIES: &str = "FLUSH_JIFFIES";
    pub const PAGE_SIZE: &str = "PAGE_SIZE";
    pub const GUEST_TRACKING: &str = "GUEST_TRACKING";
    pub const LRUVEC_VAL_LONG: &str = "LRUVEC_VAL_LONG";
    pub const EXIT_GROUP_DEAD_ARG: &str = "EXIT_GROUP_DEAD_ARG";
    pub const ITEM_ANON: &str = "ITEM_ANON";
    pub const ITEM_FILE: &str = "ITEM_FILE";
    pub const ITEM_PAGETABLE: &str = "ITEM_PAGETABLE";
    pub const ITEM_SEC_PAGETABLE: &str = "ITEM_SEC_PAGETABLE";
    pub const ITEM_KSTACK_KB: &str = "ITEM_KSTACK_KB";
    pub const ITEM_SLAB_RECL_B: &str = "ITEM_SLAB_RECL_B";
    pub const ITEM_SLAB_UNRECL_B: &str = "ITEM_SLAB_UNRECL_B";
    pub const ITEM_SHMEM: &str = "ITEM_SHMEM";
    pub const ITEM_SOCK: &str = "ITEM_SOCK";
    pub const STATE_VAL_LONG: &str = "STATE_VAL_LONG";
    pub const OFF_LRUVEC_ID: &str = "OFF_LRUVEC_ID";
    pub const OFF_LRUVEC_ITEM: &str = "OFF_LRUVEC_ITEM";
    pub const OFF_LRUVEC_VAL: &str = "OFF_LRUVEC_VAL";
    pub const OFF_VICTIM_PID: &str = "OFF_VICTIM_PID";
    pub const OFF_VICTIM_COMM: &str = "OFF_VICTIM_COMM";
    /// Offset of the first rss field (total_vm); -1 when the tracepoint has only the pid.
    pub const OFF_VICTIM_TOTAL_VM: &str = "OFF_VICTIM_TOTAL_VM";
    pub const OFF_VICTIM_ANON: &str = "OFF_VICTIM_ANON";
    pub const OFF_VICTIM_FILE: &str = "OFF_VICTIM_FILE";
    pub const OFF_VICTIM_SHMEM: &str = "OFF_VICTIM_SHMEM";
    pub const OFF_VICTIM_UID: &str = "OFF_VICTIM_UID";
    pub const OFF_VICTIM_PGTABLES: &str = "OFF_VICTIM_PGTABLES";
    pub const OFF_VICTIM_ADJ: &str = "OFF_VICTIM_ADJ";
    pub const OFF_RECLAIM_NR: &str = "OFF_RECLAIM_NR";
    pub const OFF_EXIT_GROUP_DEAD: &str = "OFF_EXIT_GROUP_DEAD";
    pub const OFF_EXEC_OLD_PID: &str = "OFF_EXEC_OLD_PID";
    /// signal:signal_generate fields (the same layout on every kernel since 3.x; read from its
    /// tracefs format all the same).
    pub const OFF_SIG_SIG: &str = "OFF_SIG_SIG";
    pub const OFF_SIG_CODE: &str = "OFF_SIG_CODE";
    pub const OFF_SIG_COMM: &str = "OFF_SIG_COMM";
    pub const OFF_SIG_PID: &str = "OFF_SIG_PID";
    pub const OFF_SIG_RESULT: &str = "OFF_SIG_RESULT";
    /// task_struct.pid, .tgid and .comm (the raw signal program reads its target task).
    pub const OFF_TASK_PID: &str = "OFF_TASK_PID";
    pub const OFF_TASK_TGID: &str = "OFF_TASK_TGID";
    pub const OFF_TASK_COMM: &str = "OFF_TASK_COMM";
    /// From a memory css to its memcg's usage counter (pages).
    pub const OFF_CSS_USAGE: &str = "OFF_CSS_USAGE";
    /// What the raw mark_victim program reads of its victim (kernel_btf::VictimOffsets).
    pub const OFF_TASK_MM: &str = "OFF_TASK_MM";
    pub const OFF_TASK_SIGNAL: &str = "OFF_TASK_SIGNAL";
    pub const OFF_MM_TOTAL_VM: &str = "OFF_MM_TOTAL_VM";
    pub const OFF_MM_PGTABLES: &str = "OFF_MM_PGTABLES";
    pub const OFF_MM_RSS_FILE: &str = "OFF_MM_RSS_FILE";
    pub const OFF_MM_RSS_ANON: &str = "OFF_MM_RSS_ANON";
    pub const OFF_MM_RSS_SHMEM: &str = "OFF_MM_RSS_SHMEM";
    pub const OFF_SIGNAL_OOM_ADJ: &str = "OFF_SIGNAL_OOM_ADJ";
    /// task_struct.cgroups, css_set.subsys[memory_cgrp_id] and cgroup_subsys_state.cgroup: a
    /// task's memory cgroup, read at OOM and exec events. TASK_MEMCG_ON is 0 when BTF lacks one.
    pub const TASK_MEMCG_ON: &str = "TASK_MEMCG_ON";
    pub const OFF_TASK_CGROUPS: &str = "OFF_TASK_CGROUPS";
    pub const OFF_CSS_SET_MEMORY: &str = "OFF_CSS_SET_MEMORY";
    pub const OFF_CSS_CGROUP: &str = "OFF_CSS_CGROUP";
    /// cgroup_subsys_state.parent and mem_cgroup.oom_group (from the css): memory.oom.group
    /// of a victim's memcgs, read by the raw mark_victim. OOM_GROUP_ON is 0 when BTF lacks one.
    pub const OOM_GROUP_ON: &str = "OOM_GROUP_ON";
    pub const OFF_CSS_PARENT: &str = "OFF_CSS_PARENT";
    pub const OFF_CSS_OOM_GROUP: &str = "OFF_CSS_OOM_GROUP";
    pub const SELF_TGID: &str = "SELF_TGID";
    /// Offsets of `struct mem_cgroup`'s css.cgroup, `struct cgroup`'s kn and `struct
    /// kernfs_node`'s id: the kernel-function programs turn a memcg pointer into its id.
    pub const OFF_MEMCG_CGROUP: &str = "OFF_MEMCG_CGROUP";
    pub const OFF_CGROUP_KN: &str = "OFF_CGROUP_KN";
    pub const OFF_KN_ID: &str = "OFF_KN_ID";
    /// Offsets in `struct uncharge_gather` (the function tier's frees).
    pub const OFF_UG_MEMCG: &str = "OFF_UG_MEMCG";
    pub const OFF_UG_NR_MEMORY: &str = "OFF_UG_NR_MEMORY";
    pub const OFF_UG_NR_KMEM: &str = "OFF_UG_NR_KMEM";
    pub const OFF_PAGE_MAPPING: &str = "OFF_PAGE_MAPPING";
}

/// Map names, shared so that neither side can misspell them.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const CHARGES: &str = "CHARGES";
    pub const WATCHED: &str = "WATCHED";
    pub const STATS: &str = "STATS";
    pub const SEEN_THREADS: &str = "SEEN_THREADS";
    pub const IN_GUEST_FAULT: &str = "IN_GUEST_FAULT";
    pub const RECLAIM_START: &str = "RECLAIM_START";
    pub const GUEST_RAM: &str = "GUEST_RAM";
    pub const GUEST_SEEN: &str = "GUEST_SEEN";
    pub const CHARGE_KIND: &str = "CHARGE_KIND";
    pub const OOM_START: &str = "OOM_START";
    pub const COUNTING: &str = "COUNTING";
}

// The ring records' sizes are part of the contract between the two sides: a field added on one
// side only must not compile.
const _: () = {
    assert!(size_of::<ChargeEvent>() == 96);
    assert!(size_of::<OomVictimEvent>() == 136);
    assert!(size_of::<OomAttemptEvent>() == 64);
    assert!(size_of::<ReclaimEvent>() == 64);
    assert!(size_of::<ThreadExitEvent>() == 40);
    assert!(size_of::<ExecEvent>() == 48);
    assert!(size_of::<KillSignalEvent>() == 88);
    assert!(size_of::<ChargeKey>() == 16);
    assert!(size_of::<ChargeValue>() == 72);
    assert!(size_of::<GuestRanges>() == 64);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain #[repr(C)] integer structs with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for ChargeKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ChargeValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ChargeTotals {}
    // SAFETY: as above.
    unsafe impl aya::Pod for GuestRanges {}
}
