//! Kernel-function tier of the guest-fault hook: kvm_mmu_page_fault, by fentry+fexit or
//! kprobe+kretprobe. While a vCPU thread is inside it, the anon memory it charges is guest RAM
//! being faulted in (the same IN_GUEST_FAULT mark the kvm tracepoints set, scoped exactly).
use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};

use crate::maps::{GUEST_SEEN, IN_GUEST_FAULT, current_ids};

#[inline(always)]
fn fault_enter() {
    let (tid, _) = current_ids();
    let _ = IN_GUEST_FAULT.insert(&tid, &1, 0);
    if let Some(seen) = GUEST_SEEN.get_ptr_mut(0) {
        // SAFETY: slot 0 of a one-entry array; a racy store of the same value is harmless.
        unsafe { *seen = 1 };
    }
}

#[inline(always)]
fn fault_exit() {
    let (tid, _) = current_ids();
    if IN_GUEST_FAULT.get_ptr(&tid).is_some() {
        let _ = IN_GUEST_FAULT.remove(&tid);
    }
}

#[fentry(function = "kvm_mmu_page_fault")]
pub fn guest_fault_fentry(_ctx: FEntryContext) -> u32 {
    fault_enter();
    0
}

#[fexit(function = "kvm_mmu_page_fault")]
pub fn guest_fault_fexit(_ctx: FExitContext) -> u32 {
    fault_exit();
    0
}

#[kprobe]
pub fn guest_fault_kprobe(_ctx: ProbeContext) -> u32 {
    fault_enter();
    0
}

#[kretprobe]
pub fn guest_fault_kretprobe(_ctx: RetProbeContext) -> u32 {
    fault_exit();
    0
}
