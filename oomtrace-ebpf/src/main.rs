//! oomtrace eBPF programs: tracepoint tier and kernel-function (fentry/kprobe) tier. One small program per hook; the shared maps and the
//! globals injected by userspace live in `maps` and `globals`.
#![no_std]
#![no_main]
// atomic_xadd: the interrupt pseudo-thread's totals are added to from every CPU.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod capability;
mod charge;
mod charge_fn;
mod exec;
mod globals;
mod guest_ram;
mod kill_signal;
mod kvm;
mod kvm_fn;
mod maps;
mod oom;
mod oom_fn;
mod reclaim;
mod sock;
mod task;
mod thread_exit;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
