//! sched:sched_process_exit: tells userspace that a thread it tracks is gone, so it can read the
//! thread's final totals and forget it (bounded state on both sides).
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use oomtrace_common::{KIND_THREAD_EXIT, ThreadExitEvent};

use crate::{
    globals::{self as g, get},
    maps::{IN_GUEST_FAULT, SEEN_THREADS, current_comm, current_ids, now_ns, send},
};

#[tracepoint]
pub fn sched_exit(ctx: TracePointContext) -> u32 {
    let off = get(&g::OFF_EXIT_GROUP_DEAD);
    // Read lazily: most exiting threads are not ours.
    thread_exited(|| {
        if off >= 0 {
            // SAFETY: offset from this kernel's tracefs format.
            unsafe { ctx.read_at::<u8>(off as usize) }.unwrap_or(0)
        } else {
            0
        }
    });
    0
}

/// The raw variant: (task, group_dead) where the prototype has group_dead, (task) before.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_exit_raw(ctx: RawTracePointContext) -> u32 {
    thread_exited(|| {
        if get(&g::EXIT_GROUP_DEAD_ARG) != 0 {
            ctx.arg::<u64>(1) as u8
        } else {
            0
        }
    });
    0
}

#[inline(always)]
fn thread_exited(group_dead: impl FnOnce() -> u8) {
    let (tid, tgid) = current_ids();
    if SEEN_THREADS.get_ptr(&tid).is_none() {
        return;
    }
    let _ = SEEN_THREADS.remove(&tid);
    let _ = IN_GUEST_FAULT.remove(&tid);
    let event = ThreadExitEvent {
        kind: KIND_THREAD_EXIT,
        tid,
        tgid,
        group_dead: (group_dead() != 0) as u32,
        ts_ns: now_ns(),
        comm: current_comm(),
    };
    send(&event);
}
