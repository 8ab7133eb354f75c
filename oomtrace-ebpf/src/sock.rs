//! memcg:mod_memcg_state → socket buffers (MEMCG_SOCK) per (thread, memcg), into the same
//! charge totals as the page charges. The classic tracepoint, not a raw one: its record says in
//! which context the kernel charged (common_flags), and a socket's receive is charged in softirq
//! context, on whatever thread that interrupted; those charges go to the memcg's interrupt
//! pseudo-thread. Sends (and receives the reading thread processes) are the thread's own.
//! Runs only where the memcg's own stat updates are rare next to page charges (MEMCG_KMEM per
//! kernel page, MEMCG_SOCK per socket buffer batch), so the record's cost does not matter.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use oomtrace_common::INTERRUPT_TID;

use crate::{
    charge::{Kind, account, account_for},
    globals::{self as g, get},
    maps::ctx_field,
};

/// The record layout of every kernel with the tracepoint (`u64 id; int item;` after the common
/// header, then `int val` before 7.0, `long val` since); userspace attaches this program only
/// where the format says so.
const COMMON_FLAGS: usize = 2;
const ID: usize = 8;
const ITEM: usize = 16;
const VAL_INT: usize = 20;
const VAL_LONG: usize = 24;
/// TRACE_FLAG_HARDIRQ | TRACE_FLAG_SOFTIRQ | TRACE_FLAG_NMI (include/linux/trace_events.h).
const IN_INTERRUPT: u8 = 0x08 | 0x10 | 0x40;

#[tracepoint]
pub fn memcg_state(ctx: TracePointContext) -> u32 {
    // SAFETY: userspace attaches this program only when the format has these offsets.
    let item: i32 = unsafe { ctx_field(&ctx, ITEM) };
    if item != get(&g::ITEM_SOCK) {
        return 0;
    }
    // SAFETY: as above.
    let (val, id) = unsafe {
        (
            if get(&g::STATE_VAL_LONG) != 0 {
                ctx_field::<i64>(&ctx, VAL_LONG)
            } else {
                ctx_field::<i32>(&ctx, VAL_INT) as i64
            },
            ctx_field::<u64>(&ctx, ID),
        )
    };
    // The common header is not directly loadable from a tracepoint program (the verifier
    // allows offsets from 8 on): read with a helper, on this rare path only.
    // SAFETY: common_flags is a u8 at offset 2 of every trace record.
    let flags: u8 = unsafe { ctx.read_at(COMMON_FLAGS) }.unwrap_or(0);
    // The tracepoint gives the value in pages (MEMCG_SOCK counts pages).
    let bytes = val * get(&g::PAGE_SIZE);
    if flags & IN_INTERRUPT != 0 {
        let _ =
            account_for::<_, true, true>(&ctx, Kind::Sock, bytes, id, INTERRUPT_TID, INTERRUPT_TID);
    } else {
        let _ = account::<_, true>(&ctx, Kind::Sock, bytes, id);
    }
    0
}
