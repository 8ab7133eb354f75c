//! exceptions:page_fault_user: a qemu thread faulting inside its guest RAM mapping (TCG vCPUs
//! write guest RAM directly; iothreads and the main thread DMA into it) is charging guest RAM.
//! Attached only once userspace found a qemu guest RAM mapping; one hash lookup per user fault
//! for every other process.
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use oomtrace_common::GUEST_RANGES;

use crate::maps::{GUEST_RAM, IN_GUEST_FAULT, ctx_field, current_ids};

#[tracepoint]
pub fn guest_ram_fault(ctx: TracePointContext) -> u32 {
    // SAFETY: exceptions:page_fault_user has `unsigned long address` first after the common
    // header on every x86_64 kernel; userspace attaches this program only when the format says so.
    let addr: u64 = unsafe { ctx_field(&ctx, 8) };
    tag_fault(addr);
    0
}

/// The raw variant: the address is the tracepoint's first argument. Its own recursion guard,
/// as the raw charge program's: the two never make the kernel skip each other.
#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn guest_ram_fault_raw(ctx: RawTracePointContext) -> u32 {
    tag_fault(ctx.arg::<u64>(0));
    0
}

#[inline(always)]
fn tag_fault(addr: u64) {
    let (tid, tgid) = current_ids();
    let Some(ranges) = GUEST_RAM.get_ptr(&tgid) else {
        return;
    };
    // SAFETY: a map value pointer stays valid for the program's run.
    let r = unsafe { &*ranges };
    let mut inside = false;
    for i in 0..GUEST_RANGES {
        if addr >= r.start[i] && addr < r.end[i] {
            inside = true;
        }
    }
    if inside {
        let _ = IN_GUEST_FAULT.insert(&tid, &addr, 0);
    } else if IN_GUEST_FAULT.get_ptr(&tid).is_some() {
        let _ = IN_GUEST_FAULT.remove(&tid);
    }
}
