//! oom:mark_victim: runs in the thread that invoked the OOM killer, so `current` is the invoker;
//! with the kernel-function oom hook attached, OOM_START holds the memcg of its OOM.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use oomtrace_common::{KIND_OOM_VICTIM, OomStart, OomVictimEvent};

use crate::{
    globals::{self as g, get},
    maps::{OOM_START, current_comm, current_ids, now_ns, read_kernel_u64, send},
    task::{current_memcg_id, task_oom_group},
};

/// Reads an optional field: offset -1 means this kernel's tracepoint does not have it.
#[inline(always)]
fn field<T: Default>(ctx: &TracePointContext, offset: i32) -> T {
    if offset < 0 {
        return T::default();
    }
    // SAFETY: offset comes from this kernel's tracefs format.
    unsafe { ctx.read_at::<T>(offset as usize) }.unwrap_or_default()
}

/// The OOM this kill is part of, from the kernel-function tier's entry record (zeros without it).
#[inline(always)]
fn oom_start(tid: u32) -> OomStart {
    // SAFETY: a map value pointer is valid for this program's run; copied at once.
    OOM_START
        .get_ptr(&tid)
        .map_or(OomStart::default(), |s| unsafe { *s })
}

#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    let (tid, tgid) = current_ids();
    let start = oom_start(tid);
    let mut event = OomVictimEvent {
        kind: KIND_OOM_VICTIM,
        invoker_tid: tid,
        invoker_tgid: tgid,
        victim_pid: field::<i32>(&ctx, get(&g::OFF_VICTIM_PID) as i32) as u32,
        ts_ns: now_ns(),
        total_vm_kb: field(&ctx, get(&g::OFF_VICTIM_TOTAL_VM)),
        anon_rss_kb: field(&ctx, get(&g::OFF_VICTIM_ANON)),
        file_rss_kb: field(&ctx, get(&g::OFF_VICTIM_FILE)),
        shmem_rss_kb: field(&ctx, get(&g::OFF_VICTIM_SHMEM)),
        pgtables_kb: field(&ctx, get(&g::OFF_VICTIM_PGTABLES)),
        uid: field(&ctx, get(&g::OFF_VICTIM_UID)),
        oom_score_adj: field::<i16>(&ctx, get(&g::OFF_VICTIM_ADJ)) as i32,
        invoker_comm: current_comm(),
        victim_comm: [0; 16],
        // The kernel's own facts at the kill, not what oomtrace remembers of this thread: it
        // may have charged other memcgs before it moved and exec'd.
        invoker_memcg_id: current_memcg_id().unwrap_or(0),
        oom_memcg_id: start.memcg_id,
        // The classic record names the victim by pid only: its memcgs are out of reach.
        group_memcg_id: 0,
        oom_start_ns: start.start_ns,
    };
    let comm_off = get(&g::OFF_VICTIM_COMM);
    if comm_off >= 0 {
        // __data_loc: low 16 bits are the offset of the string in the record.
        let loc: u32 = field(&ctx, comm_off);
        let src = (ctx.as_ptr() as usize + (loc & 0xffff) as usize) as *const u8;
        // SAFETY: the string lives inside this tracepoint record; the helper bounds the copy.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(src, &mut event.victim_comm) };
    }
    send(&event);
    0
}

/// The raw variant, (struct task_struct *victim, uid_t uid) (6.8+): the victim's facts read from
/// the task as the tracepoint computes them (pid, comm, mm->total_vm, the rss counters'
/// `count` that get_mm_counter returns, mm->pgtables_bytes, signal->oom_score_adj). Its
/// recursion guard is its own: a collector preempted inside a map syscall cannot make the
/// kernel skip it.
#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn oom_mark_victim_raw(ctx: RawTracePointContext) -> u32 {
    let task: u64 = ctx.arg(0);
    let (tid, tgid) = current_ids();
    let start = oom_start(tid);
    // SAFETY: bpf_probe_read_kernel checks every address; offsets from this kernel's BTF.
    let pid: i32 =
        unsafe { bpf_probe_read_kernel((task + get(&g::OFF_TASK_PID)) as *const i32) }.unwrap_or(0);
    // SAFETY: as above.
    let victim_comm: [u8; 16] =
        unsafe { bpf_probe_read_kernel((task + get(&g::OFF_TASK_COMM)) as *const [u8; 16]) }
            .unwrap_or([0; 16]);
    let mm = read_kernel_u64(task + get(&g::OFF_TASK_MM)).unwrap_or(0);
    // Pages to kB the way the kernel's PG_COUNT_TO_KB does (4 KiB pages: << 2); a negative
    // percpu count reads as 0, as percpu_counter_read_positive does.
    let page_kb = (get(&g::PAGE_SIZE) as u64) >> 10;
    let pages = |off: u64| -> u64 {
        if mm == 0 {
            return 0;
        }
        let v = read_kernel_u64(mm + off).unwrap_or(0) as i64;
        if v < 0 { 0 } else { v as u64 }
    };
    let signal = read_kernel_u64(task + get(&g::OFF_TASK_SIGNAL)).unwrap_or(0);
    let oom_score_adj: i16 = if signal == 0 {
        0
    } else {
        // SAFETY: as above (short oom_score_adj).
        unsafe { bpf_probe_read_kernel((signal + get(&g::OFF_SIGNAL_OOM_ADJ)) as *const i16) }
            .unwrap_or(0)
    };
    let event = OomVictimEvent {
        kind: KIND_OOM_VICTIM,
        invoker_tid: tid,
        invoker_tgid: tgid,
        victim_pid: pid as u32,
        ts_ns: now_ns(),
        total_vm_kb: pages(get(&g::OFF_MM_TOTAL_VM)).wrapping_mul(page_kb),
        anon_rss_kb: pages(get(&g::OFF_MM_RSS_ANON)).wrapping_mul(page_kb),
        file_rss_kb: pages(get(&g::OFF_MM_RSS_FILE)).wrapping_mul(page_kb),
        shmem_rss_kb: pages(get(&g::OFF_MM_RSS_SHMEM)).wrapping_mul(page_kb),
        pgtables_kb: pages(get(&g::OFF_MM_PGTABLES)) >> 10,
        uid: ctx.arg::<u64>(1) as u32,
        oom_score_adj: oom_score_adj as i32,
        invoker_comm: current_comm(),
        victim_comm,
        invoker_memcg_id: current_memcg_id().unwrap_or(0),
        oom_memcg_id: start.memcg_id,
        group_memcg_id: task_oom_group(task),
        oom_start_ns: start.start_ns,
    };
    send(&event);
    0
}
