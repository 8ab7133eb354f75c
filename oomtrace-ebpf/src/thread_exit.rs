//! sched:sched_process_exit: tells userspace that a thread it tracks is gone, so it can read the
//! thread's final totals and forget it (bounded state on both sides).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use oomtrace_common::{KIND_THREAD_EXIT, ThreadExitEvent};

use crate::{
    globals::{self as g, get},
    maps::{IN_GUEST_FAULT, SEEN_THREADS, current_comm, current_ids, now_ns, send},
};

#[tracepoint]
pub fn sched_exit(ctx: TracePointContext) -> u32 {
    let (tid, tgid) = current_ids();
    if SEEN_THREADS.get_ptr(&tid).is_none() {
        return 0;
    }
    let _ = SEEN_THREADS.remove(&tid);
    let _ = IN_GUEST_FAULT.remove(&tid);
    let off = get(&g::OFF_EXIT_GROUP_DEAD);
    let group_dead: u8 = if off >= 0 {
        // SAFETY: offset from this kernel's tracefs format.
        unsafe { ctx.read_at(off as usize) }.unwrap_or(0)
    } else {
        0
    };
    let event = ThreadExitEvent {
        kind: KIND_THREAD_EXIT,
        tid,
        tgid,
        group_dead: group_dead as u32,
        ts_ns: now_ns(),
        comm: current_comm(),
    };
    send(&event);
    0
}
