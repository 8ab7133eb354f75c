//! vmscan memcg reclaim begin/end: a charge hit the memcg limit. Only threads already seen charging
//! a watched memcg are tracked.
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use oomtrace_common::{KIND_RECLAIM, ReclaimEvent};

use crate::{
    globals::{self as g, get},
    maps::{RECLAIM_START, SEEN_THREADS, current_comm, current_ids, now_ns, send},
};

#[tracepoint]
pub fn memcg_reclaim_begin(_ctx: TracePointContext) -> u32 {
    reclaim_began();
    0
}

/// The raw variant reads no argument: any prototype serves.
#[raw_tracepoint(tracepoint = "mm_vmscan_memcg_reclaim_begin")]
pub fn memcg_reclaim_begin_raw(_ctx: RawTracePointContext) -> u32 {
    reclaim_began();
    0
}

#[tracepoint]
pub fn memcg_reclaim_end(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from this kernel's tracefs format.
    let nr: u64 = unsafe { ctx.read_at(get(&g::OFF_RECLAIM_NR) as usize) }.unwrap_or(0);
    reclaim_ended(nr);
    0
}

/// The raw variant: (unsigned long nr_reclaimed, ...).
#[raw_tracepoint(tracepoint = "mm_vmscan_memcg_reclaim_end")]
pub fn memcg_reclaim_end_raw(ctx: RawTracePointContext) -> u32 {
    reclaim_ended(ctx.arg::<u64>(0));
    0
}

#[inline(always)]
fn reclaim_began() {
    let (tid, _) = current_ids();
    if SEEN_THREADS.get_ptr(&tid).is_some() {
        let _ = RECLAIM_START.insert(&tid, &now_ns(), 0);
    }
}

#[inline(always)]
fn reclaim_ended(nr_reclaimed: u64) {
    let (tid, tgid) = current_ids();
    let Some(start) = RECLAIM_START.get_ptr(&tid) else {
        return;
    };
    // SAFETY: pointer from a successful lookup of this thread's own key.
    let start = unsafe { *start };
    let _ = RECLAIM_START.remove(&tid);
    let memcg_id = match SEEN_THREADS.get_ptr(&tid) {
        // SAFETY: as above.
        Some(m) => unsafe { *m },
        None => 0,
    };
    let now = now_ns();
    let event = ReclaimEvent {
        kind: KIND_RECLAIM,
        tid,
        tgid,
        _pad: 0,
        ts_ns: now,
        duration_ns: now.wrapping_sub(start),
        nr_reclaimed,
        memcg_id,
        comm: current_comm(),
    };
    send(&event);
}
