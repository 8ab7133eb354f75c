//! oom:mark_victim: runs in the thread that invoked the OOM killer, so `current` is the invoker;
//! with the kernel-function oom hook attached, OOM_START holds the memcg of its OOM.
use aya_ebpf::{
    EbpfContext, helpers::bpf_probe_read_kernel_str_bytes, macros::tracepoint,
    programs::TracePointContext,
};
use oomtrace_common::{KIND_OOM_VICTIM, OomVictimEvent};

use crate::{
    globals::{self as g, get},
    maps::{OOM_START, current_comm, current_ids, now_ns, send},
    task::current_memcg_id,
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

#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    let (tid, tgid) = current_ids();
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
        // SAFETY: a map value pointer is valid for this program's run; copied at once.
        oom_memcg_id: OOM_START
            .get_ptr(&tid)
            .map_or(0, |s| unsafe { (*s).memcg_id }),
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
