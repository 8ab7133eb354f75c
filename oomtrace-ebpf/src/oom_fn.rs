//! Kernel-function tier of the OOM hook: mem_cgroup_out_of_memory(memcg, gfp_mask, order) →
//! bool, by fentry+fexit or kprobe+kretprobe. Every memcg OOM is seen with its start, its
//! duration and whether a victim was found, including the ones where nothing is killed.
use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use oomtrace_common::{KIND_OOM_ATTEMPT, OomAttemptEvent, OomStart};

use crate::{
    charge_fn::memcg_id,
    maps::{OOM_START, current_comm, current_ids, now_ns, send},
};

#[inline(always)]
fn oom_start(memcg: u64, order: i32) {
    let (tid, _) = current_ids();
    let start = OomStart {
        start_ns: now_ns(),
        memcg_id: memcg_id(memcg).unwrap_or(0),
        order,
        _pad: 0,
    };
    let _ = OOM_START.insert(&tid, &start, 0);
}

#[inline(always)]
fn oom_end(killed: bool) {
    let (tid, tgid) = current_ids();
    let Some(start) = OOM_START.get_ptr(&tid) else {
        return;
    };
    // SAFETY: pointer from a successful lookup of this thread's own key, copied at once.
    let start = unsafe { *start };
    let _ = OOM_START.remove(&tid);
    let now = now_ns();
    send(&OomAttemptEvent {
        kind: KIND_OOM_ATTEMPT,
        tid,
        tgid,
        order: start.order,
        start_ns: start.start_ns,
        duration_ns: now.saturating_sub(start.start_ns),
        memcg_id: start.memcg_id,
        killed: killed as u32,
        _pad: 0,
        comm: current_comm(),
    });
}

#[fentry(function = "mem_cgroup_out_of_memory")]
pub fn oom_start_fentry(ctx: FEntryContext) -> u32 {
    let order: u64 = ctx.arg(2);
    oom_start(ctx.arg(0), order as i32);
    0
}

#[fexit(function = "mem_cgroup_out_of_memory")]
pub fn oom_end_fexit(ctx: FExitContext) -> u32 {
    // The return value follows the three arguments in an fexit context.
    let ret: u64 = ctx.arg(3);
    oom_end(ret & 0xff != 0);
    0
}

#[kprobe]
pub fn oom_start_kprobe(ctx: ProbeContext) -> u32 {
    let order: u64 = ctx.arg(2).unwrap_or(0);
    oom_start(ctx.arg(0).unwrap_or(0), order as i32);
    0
}

#[kretprobe]
pub fn oom_end_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret: u64 = ctx.ret();
    oom_end(ret & 0xff != 0);
    0
}
