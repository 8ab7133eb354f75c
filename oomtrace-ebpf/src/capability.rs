//! Empty programs whose only job is to be loaded (and attached) once by `doctor`: whether this
//! kernel allows fentry and kprobes on the charge path, asked of the kernel itself.
use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};

#[fentry(function = "try_charge_memcg")]
pub fn can_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[kprobe]
pub fn can_kprobe(_ctx: ProbeContext) -> u32 {
    0
}
