//! sched:sched_process_exec: a thread oomtrace tracks, or one running in a watched memcg, loaded
//! a new program. Its name is the new one from here on (a shell that joined a pod's cgroup and
//! exec'd memhold, as `kubectl exec` does, is memhold now), and its process facts changed.
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use oomtrace_common::{ExecEvent, KIND_EXEC};

use crate::{
    globals::{self as g, get},
    maps::{SEEN_THREADS, WATCHED, current_comm, current_ids, now_ns, send},
    task::current_memcg_id,
};

#[tracepoint]
pub fn sched_exec(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from this kernel's tracefs format (pid_t old_pid).
    let old_tid: i32 = unsafe { ctx.read_at(get(&g::OFF_EXEC_OLD_PID) as usize) }.unwrap_or(0);
    exec_done(old_tid as u32);
    0
}

/// The raw variant: (task, pid_t old_pid, bprm).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_exec_raw(ctx: RawTracePointContext) -> u32 {
    exec_done(ctx.arg::<u64>(1) as i32 as u32);
    0
}

#[inline(always)]
fn exec_done(old_tid: u32) {
    let (tid, tgid) = current_ids();
    if tgid == get(&g::SELF_TGID) {
        return;
    }
    let memcg_id = current_memcg_id().unwrap_or(0);
    let seen = SEEN_THREADS.get_ptr(&tid).is_some() || SEEN_THREADS.get_ptr(&old_tid).is_some();
    // SAFETY: a map value pointer is valid for this program's run.
    let watched = get(&g::FILTER_ON) != 0
        && WATCHED
            .get_ptr(&memcg_id)
            .is_some_and(|v| unsafe { *v } == 1);
    if !seen && !watched {
        // Not ours yet: its first charge record will carry its name.
        return;
    }
    send(&ExecEvent {
        kind: KIND_EXEC,
        tid,
        tgid,
        old_tid,
        ts_ns: now_ns(),
        memcg_id,
        comm: current_comm(),
    });
}
