//! memcg:mod_memcg_state → socket buffers (MEMCG_SOCK) per (thread, memcg), into the same
//! charge totals as the page charges. A socket's receive is charged in softirq, on whatever
//! task that interrupted (another pod's thread, an idle CPU's): a charge made while a task of
//! another memcg runs is not that task's, and goes to the memcg's interrupt pseudo-thread.
//! Sends, and receives the memcg's own threads process, are the thread's. The tracepoint fires
//! for the memcg's own items only (MEMCG_KMEM per kernel page, MEMCG_SOCK per socket buffer
//! batch), rarely next to page charges, so its classic record costs nothing that matters.
use aya_ebpf::{helpers::bpf_get_current_task, macros::tracepoint, programs::TracePointContext};
use oomtrace_common::INTERRUPT_TID;

use crate::{
    charge::{Kind, account, account_for},
    globals::{self as g, get},
    maps::ctx_field,
    task::task_memcg_id,
};

/// The record layout of every kernel with the tracepoint (`u64 id; int item;` after the common
/// header, then `int val` before 7.0, `long val` since); userspace attaches this program only
/// where the format says so.
const ID: usize = 8;
const ITEM: usize = 16;
const VAL_INT: usize = 20;
const VAL_LONG: usize = 24;

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
    // SAFETY: bpf_get_current_task has no preconditions; the task is read by helpers only.
    let current = unsafe { bpf_get_current_task() };
    let foreign = task_memcg_id(current).is_some_and(|own| own != id);
    // The tracepoint gives the value in pages (MEMCG_SOCK counts pages).
    let bytes = val * get(&g::PAGE_SIZE);
    if foreign {
        let _ =
            account_for::<_, true, true>(&ctx, Kind::Sock, bytes, id, INTERRUPT_TID, INTERRUPT_TID);
    } else {
        let _ = account::<_, true>(&ctx, Kind::Sock, bytes, id);
    }
    0
}
