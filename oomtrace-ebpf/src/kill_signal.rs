//! signal:signal_generate: a SIGKILL or SIGTERM queued on a thread oomtrace tracks, sent by a
//! process (`current` is the sender). The kernel's own signals (si_code SI_KERNEL: the OOM
//! killer's SIGKILL among them) are left out: the oom hooks tell those.
use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use oomtrace_common::{KIND_KILL_SIGNAL, KillSignalEvent};

use crate::{
    globals::{self as g, get},
    maps::read_kernel_u64,
    maps::{SEEN_THREADS, WATCHED, current_comm, current_ids, now_ns, send},
    task::task_memcg,
};

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
/// si_code of signals the kernel sends itself (SEND_SIG_PRIV).
const SI_KERNEL: i32 = 0x80;
/// kill(2)'s si_code: what the tracepoint records for SEND_SIG_NOINFO.
const SI_USER: i32 = 0;
/// Offset of si_code in struct kernel_siginfo (int si_signo, si_errno, si_code).
const SI_CODE_OFF: u64 = 8;

#[tracepoint]
pub fn kill_signal(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from this kernel's tracefs format for signal:signal_generate.
    let sig: i32 = unsafe { ctx.read_at(get(&g::OFF_SIG_SIG) as usize) }.unwrap_or(0);
    if sig != SIGKILL && sig != SIGTERM {
        return 0;
    }
    // SAFETY: as above (int code).
    let code: i32 = unsafe { ctx.read_at(get(&g::OFF_SIG_CODE) as usize) }.unwrap_or(SI_KERNEL);
    if code == SI_KERNEL {
        return 0;
    }
    // SAFETY: as above (pid_t pid: the target thread).
    let target: i32 = unsafe { ctx.read_at(get(&g::OFF_SIG_PID) as usize) }.unwrap_or(0);
    let target = target as u32;
    // Only threads that charged something oomtrace watches: the charge map's thread index.
    let Some(memcg) = SEEN_THREADS.get_ptr(&target) else {
        return 0;
    };
    // SAFETY: a map value pointer is valid for this program's run.
    let target_memcg_id = unsafe { *memcg };
    let (tid, tgid) = current_ids();
    if tgid == get(&g::SELF_TGID) {
        return 0;
    }
    send(&KillSignalEvent {
        kind: KIND_KILL_SIGNAL,
        sender_tid: tid,
        sender_tgid: tgid,
        target_tid: target,
        sig,
        code,
        // SAFETY: as above (int result).
        result: unsafe { ctx.read_at(get(&g::OFF_SIG_RESULT) as usize) }.unwrap_or(0),
        target_tgid: 0,
        ts_ns: now_ns(),
        target_memcg_id,
        usage_bytes: u64::MAX,
        sender_comm: current_comm(),
        // SAFETY: as above (char comm[16]: the target's name).
        target_comm: unsafe { ctx.read_at(get(&g::OFF_SIG_COMM) as usize) }.unwrap_or([0; 16]),
    });
    0
}

/// The raw variant: (int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
/// int result). The target is read from its task: any thread in a watched memcg, whether or not
/// it charged anything yet.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn kill_signal_raw(ctx: RawTracePointContext) -> u32 {
    let sig = ctx.arg::<u64>(0) as i32;
    if sig != SIGKILL && sig != SIGTERM {
        return 0;
    }
    // SEND_SIG_NOINFO (0) is kill(2)'s, SEND_SIG_PRIV (1) the kernel's; else a real siginfo.
    let code = match ctx.arg::<u64>(1) {
        0 => SI_USER,
        1 => SI_KERNEL,
        // SAFETY: bpf_probe_read_kernel checks the address.
        info => unsafe { bpf_probe_read_kernel((info + SI_CODE_OFF) as *const i32) }
            .unwrap_or(SI_KERNEL),
    };
    if code == SI_KERNEL {
        return 0;
    }
    let task: u64 = ctx.arg(2);
    let Some((memcg, css)) = task_memcg(task) else {
        return 0;
    };
    // SAFETY: a map value pointer is valid for this program's run.
    let watched = WATCHED.get_ptr(&memcg).is_some_and(|v| unsafe { *v } == 1);
    if get(&g::FILTER_ON) != 0 && !watched {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel checks every address; offsets from this kernel's BTF.
    let (target, target_tgid, target_comm) = unsafe {
        (
            bpf_probe_read_kernel((task + get(&g::OFF_TASK_PID)) as *const i32).unwrap_or(0),
            bpf_probe_read_kernel((task + get(&g::OFF_TASK_TGID)) as *const i32).unwrap_or(0),
            bpf_probe_read_kernel((task + get(&g::OFF_TASK_COMM)) as *const [u8; 16])
                .unwrap_or([0; 16]),
        )
    };
    let (tid, tgid) = current_ids();
    if tgid == get(&g::SELF_TGID) || target_tgid as u32 == get(&g::SELF_TGID) {
        return 0;
    }
    send(&KillSignalEvent {
        kind: KIND_KILL_SIGNAL,
        sender_tid: tid,
        sender_tgid: tgid,
        target_tid: target as u32,
        sig,
        code,
        result: ctx.arg::<u64>(4) as i32,
        target_tgid: target_tgid as u32,
        ts_ns: now_ns(),
        target_memcg_id: memcg,
        // Not saturating_mul: its overflow check needs a 128-bit multiply BPF does not have.
        usage_bytes: read_kernel_u64(css + get(&g::OFF_CSS_USAGE)).map_or(u64::MAX, |pages| {
            pages.wrapping_mul(get(&g::PAGE_SIZE) as u64)
        }),
        sender_comm: current_comm(),
        target_comm,
    });
    0
}
