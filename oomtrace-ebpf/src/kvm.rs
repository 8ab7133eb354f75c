//! kvm:kvm_page_fault / kvm:kvm_entry: marks a vCPU thread as serving a guest page fault from the
//! fault exit until it re-enters the guest, so the anon charges it makes meanwhile count as guest RAM.
//! Neither reads an argument, so the raw variants serve on every kernel (kvm as a module too).
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::maps::{GUEST_SEEN, IN_GUEST_FAULT, current_ids};

#[tracepoint]
pub fn kvm_page_fault(_ctx: TracePointContext) -> u32 {
    fault_began();
    0
}

#[raw_tracepoint(tracepoint = "kvm_page_fault")]
pub fn kvm_page_fault_raw(_ctx: RawTracePointContext) -> u32 {
    fault_began();
    0
}

#[tracepoint]
pub fn kvm_entry(_ctx: TracePointContext) -> u32 {
    guest_entered();
    0
}

#[raw_tracepoint(tracepoint = "kvm_entry")]
pub fn kvm_entry_raw(_ctx: RawTracePointContext) -> u32 {
    guest_entered();
    0
}

#[inline(always)]
fn fault_began() {
    let (tid, _) = current_ids();
    let _ = IN_GUEST_FAULT.insert(&tid, &1, 0);
    if let Some(seen) = GUEST_SEEN.get_ptr_mut(0) {
        // SAFETY: slot 0 of a one-entry array; a racy store of the same value is harmless.
        unsafe { *seen = 1 };
    }
}

#[inline(always)]
fn guest_entered() {
    let (tid, _) = current_ids();
    if IN_GUEST_FAULT.get_ptr(&tid).is_some() {
        let _ = IN_GUEST_FAULT.remove(&tid);
    }
}
