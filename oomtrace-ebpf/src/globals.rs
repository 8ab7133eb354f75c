//! Values injected by userspace before load (from the running kernel's BTF and tracefs formats).
//! Read through `get` so the compiler cannot fold the defaults in.

macro_rules! global {
    ($name:ident: $ty:ty = $default:expr) => {
        #[unsafe(no_mangle)]
        pub static $name: $ty = $default;
    };
}

global!(FILTER_ON: u32 = 0);
global!(FLUSH_BYTES: i64 = 256 * 1024);
global!(FLUSH_NS: u64 = 1_000_000_000);
// FLUSH_NS in ticks (jiffies), for the programs whose flush check reads the tick count.
global!(FLUSH_JIFFIES: u64 = 250);
global!(PAGE_SIZE: i64 = 4096);
global!(GUEST_TRACKING: u32 = 0);
// 1: the raw mod_memcg_lruvec_state's `val` is a long (7.0+); 0: an int, whose upper half of
// the raw argument is not its sign.
global!(LRUVEC_VAL_LONG: u32 = 0);
// 1: the raw sched_process_exit has a `bool group_dead` argument (6.16+).
global!(EXIT_GROUP_DEAD_ARG: u32 = 0);
global!(ITEM_ANON: i32 = -1);
global!(ITEM_FILE: i32 = -1);
global!(ITEM_PAGETABLE: i32 = -1);
global!(ITEM_SEC_PAGETABLE: i32 = -1);
global!(ITEM_KSTACK_KB: i32 = -1);
global!(ITEM_SLAB_RECL_B: i32 = -1);
global!(ITEM_SLAB_UNRECL_B: i32 = -1);
// NR_SHMEM, set only where a tracepoint program counts charges (-1: shmem not told apart).
global!(ITEM_SHMEM: i32 = -1);
// MEMCG_SOCK (enum memcg_stat_item), set only where the tracepoint tier counts charges on
// cgroup v2 (-1: socket buffers not counted per thread).
global!(ITEM_SOCK: i32 = -1);
// 1: memcg:mod_memcg_state's record has `long val` at 24 (7.0+); 0: `int val` at 20.
global!(STATE_VAL_LONG: u32 = 0);
global!(OFF_LRUVEC_ID: u32 = 8);
global!(OFF_LRUVEC_ITEM: u32 = 16);
global!(OFF_LRUVEC_VAL: u32 = 20);
global!(OFF_VICTIM_PID: u32 = 8);
global!(OFF_VICTIM_COMM: i32 = -1);
global!(OFF_VICTIM_TOTAL_VM: i32 = -1);
global!(OFF_VICTIM_ANON: i32 = -1);
global!(OFF_VICTIM_FILE: i32 = -1);
global!(OFF_VICTIM_SHMEM: i32 = -1);
global!(OFF_VICTIM_UID: i32 = -1);
global!(OFF_VICTIM_PGTABLES: i32 = -1);
global!(OFF_VICTIM_ADJ: i32 = -1);
global!(OFF_RECLAIM_NR: u32 = 8);
global!(OFF_EXIT_GROUP_DEAD: i32 = -1);
global!(OFF_EXEC_OLD_PID: u32 = 12);
global!(OFF_SIG_SIG: u32 = 8);
global!(OFF_SIG_CODE: u32 = 16);
global!(OFF_SIG_COMM: u32 = 20);
global!(OFF_SIG_PID: u32 = 36);
global!(OFF_SIG_RESULT: u32 = 44);
global!(OFF_TASK_PID: u64 = 0);
global!(OFF_TASK_TGID: u64 = 0);
global!(OFF_TASK_COMM: u64 = 0);
global!(OFF_CSS_USAGE: u64 = 0);
global!(OFF_TASK_MM: u64 = 0);
global!(OFF_TASK_SIGNAL: u64 = 0);
global!(OFF_MM_TOTAL_VM: u64 = 0);
global!(OFF_MM_PGTABLES: u64 = 0);
global!(OFF_MM_RSS_FILE: u64 = 0);
global!(OFF_MM_RSS_ANON: u64 = 0);
global!(OFF_MM_RSS_SHMEM: u64 = 0);
global!(OFF_SIGNAL_OOM_ADJ: u64 = 0);
// task_struct.cgroups → css_set.subsys[memory_cgrp_id] → cgroup_subsys_state.cgroup, from BTF.
global!(TASK_MEMCG_ON: u32 = 0);
global!(OFF_TASK_CGROUPS: u64 = 0);
global!(OFF_CSS_SET_MEMORY: u64 = 0);
global!(OFF_CSS_CGROUP: u64 = 0);
// cgroup_subsys_state.parent, and mem_cgroup.oom_group less mem_cgroup.css (memory.oom.group);
// OOM_GROUP_ON is 0 when BTF lacks one.
global!(OOM_GROUP_ON: u32 = 0);
global!(OFF_CSS_PARENT: u64 = 0);
global!(OFF_CSS_OOM_GROUP: u64 = 0);
global!(SELF_TGID: u32 = 0);
// struct mem_cgroup → css.cgroup → kn → id, from BTF: the memcg id the tracepoints report.
global!(OFF_MEMCG_CGROUP: u64 = 0);
global!(OFF_CGROUP_KN: u64 = 0);
global!(OFF_KN_ID: u64 = 0);
// struct uncharge_gather: memcg, nr_memory, nr_kmem (-1: absent), from BTF.
global!(OFF_UG_MEMCG: u64 = 0);
global!(OFF_UG_NR_MEMORY: u64 = 8);
global!(OFF_UG_NR_KMEM: i64 = -1);
/// struct page's `mapping` (-1: unknown; the charge's kind then comes from its mm alone).
global!(OFF_PAGE_MAPPING: i64 = -1);

#[inline(always)]
pub fn get<T: Copy>(v: &'static T) -> T {
    // SAFETY: `v` is a valid static; the volatile read stops the compiler from assuming the
    // default value, since userspace rewrites .rodata before load.
    unsafe { core::ptr::read_volatile(v) }
}
