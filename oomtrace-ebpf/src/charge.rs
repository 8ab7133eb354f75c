//! memcg:mod_memcg_lruvec_state → per (thread, memcg) charge totals, coalesced into ring records.
//! `account` is shared with the kernel-function tier (`charge_fn`): one aggregation, any hook.
//!
//! This runs for every memcg stat update on the machine, so the fast path is: read the item, drop
//! it unless it is one of the seven charge items, then one hash lookup for the memcg filter.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use oomtrace_common::{ChargeEvent, ChargeKey, ChargeTotals, ChargeValue, KIND_CHARGE, stat};

use crate::{
    charge_fn::memcg_id,
    globals::{self as g, get},
    maps::{
        CHARGES, EVENTS, GUEST_SEEN, IN_GUEST_FAULT, SEEN_THREADS, WATCHED, count, ctx_field,
        current_comm, current_ids, now_ns,
    },
};

/// A quarter of the 4 MiB ring: time to wake the collector.
const EVENTS_WAKE_BYTES: u64 = 1 << 20;

#[derive(Clone, Copy)]
pub enum Kind {
    Anon,
    File,
    Kernel,
    /// A free seen by the function tier (uncharge_batch): `bytes` freed, of which this many
    /// were kernel memory. The rest comes off the thread's anon first, then its page cache.
    Freed(i64),
}

/// Maps a node_stat_item to its kind and converts `val` (whose unit depends on the item) to bytes.
#[inline(always)]
fn classify(item: i32, val: i64) -> Option<(Kind, i64)> {
    let page = get(&g::PAGE_SIZE);
    if item == get(&g::ITEM_ANON) {
        Some((Kind::Anon, val * page))
    } else if item == get(&g::ITEM_FILE) {
        Some((Kind::File, val * page))
    } else if item == get(&g::ITEM_PAGETABLE) || item == get(&g::ITEM_SEC_PAGETABLE) {
        Some((Kind::Kernel, val * page))
    } else if item == get(&g::ITEM_KSTACK_KB) {
        Some((Kind::Kernel, val * 1024))
    } else if item == get(&g::ITEM_SLAB_RECL_B) || item == get(&g::ITEM_SLAB_UNRECL_B) {
        Some((Kind::Kernel, val))
    } else {
        None
    }
}

/// The record layout every kernel since 6.10 has (`u64 id; int item; int val;` after the common
/// header). Loads at constant offsets are plain instructions; userspace picks this program only
/// when this kernel's tracefs format says exactly these offsets.
const FIXED_ID: usize = 8;
const FIXED_ITEM: usize = 16;
const FIXED_VAL: usize = 20;

/// The fast variant: fields loaded straight from the record at the fixed offsets.
#[tracepoint]
pub fn memcg_lruvec_state(ctx: TracePointContext) -> u32 {
    // SAFETY: userspace attaches this program only when the format has these offsets.
    let f = unsafe {
        (
            ctx_field::<i32>(&ctx, FIXED_ITEM),
            ctx_field::<i32>(&ctx, FIXED_VAL),
            ctx_field::<u64>(&ctx, FIXED_ID),
        )
    };
    if let Some((kind, bytes)) = classify(f.0, f.1 as i64) {
        let _ = account(&ctx, kind, bytes, f.2);
    }
    0
}

/// The general variant: offsets from the tracefs format, read with a helper (slower).
#[tracepoint]
pub fn memcg_lruvec_state_any(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets come from this kernel's tracefs format for this tracepoint.
    let item: i32 = unsafe { ctx.read_at(get(&g::OFF_LRUVEC_ITEM) as usize) }.unwrap_or(-1);
    // SAFETY: as above.
    let val: i32 = unsafe { ctx.read_at(get(&g::OFF_LRUVEC_VAL) as usize) }.unwrap_or(0);
    if let Some((kind, bytes)) = classify(item, val as i64) {
        // SAFETY: as above.
        let id = unsafe { ctx.read_at::<u64>(get(&g::OFF_LRUVEC_ID) as usize) }.unwrap_or(0);
        let _ = account(&ctx, kind, bytes, id);
    }
    0
}

/// The raw variant: the tracepoint's own arguments (memcg, item, val), no trace record filled.
/// Its recursion guard is its own (a classic tracepoint program shares one per CPU with every
/// other: since 7.0 tracepoint programs run preemptible, and a thread preempted inside any of
/// them made the kernel skip every other one on that CPU).
#[raw_tracepoint(tracepoint = "mod_memcg_lruvec_state")]
pub fn memcg_lruvec_state_raw(ctx: RawTracePointContext) -> u32 {
    let item = ctx.arg::<u64>(1) as i32;
    let raw = ctx.arg::<u64>(2);
    let val = if get(&g::LRUVEC_VAL_LONG) != 0 {
        raw as i64
    } else {
        raw as i32 as i64
    };
    if let Some((kind, bytes)) = classify(item, val)
        && let Some(id) = memcg_id(ctx.arg::<u64>(0))
    {
        let _ = account(&ctx, kind, bytes, id);
    }
    0
}

/// Adds `bytes` of `kind` to the current thread's totals for `memcg_id` and sends a record when
/// enough changed (or enough time passed). The one aggregation behind every charge hook.
#[inline(always)]
pub fn account<C: EbpfContext>(ctx: &C, kind: Kind, bytes: i64, memcg_id: u64) -> Result<(), i32> {
    // WATCHED: 1 = watched, 0 = ignored. A memcg userspace has not seen yet (made in the last
    // rescan interval) is counted provisionally, so a process that starts in a new pod is seen
    // from its first page; userspace ignores it at the next sweep if it is not ours.
    if get(&g::FILTER_ON) != 0
        && let Some(v) = WATCHED.get_ptr(&memcg_id)
        // SAFETY: a map value pointer is valid for this program's run.
        && unsafe { *v } == 0
    {
        return Ok(());
    }
    let (tid, tgid) = current_ids();
    if tgid == get(&g::SELF_TGID) {
        // oomtrace's own charges (its maps, its /proc reads) are not the node's.
        return Ok(());
    }
    count(stat::CHARGE_HITS);
    let key = ChargeKey {
        tid,
        _pad: 0,
        memcg_id,
    };
    let guest = matches!(kind, Kind::Anon)
        && get(&g::GUEST_TRACKING) != 0
        && GUEST_SEEN.get(0).is_some_and(|s| *s != 0)
        && IN_GUEST_FAULT.get_ptr(&tid).is_some();

    let now = now_ns();
    let (value, first) = match CHARGES.get_ptr_mut(&key) {
        Some(v) => (v, false),
        None => {
            let fresh = ChargeValue {
                tgid,
                ..ChargeValue::default()
            };
            if CHARGES.insert(&key, &fresh, 0).is_err() {
                count(stat::MAP_FULL);
                warn!(ctx, "oomtrace: charge map full, tid {} not tracked", tid);
                return Ok(());
            }
            let _ = SEEN_THREADS.insert(&tid, &memcg_id, 0);
            match CHARGES.get_ptr_mut(&key) {
                Some(v) => (v, true),
                None => return Ok(()),
            }
        }
    };
    // SAFETY: `value` points into the map entry for this thread's own key; only this thread
    // updates it, and one charge program is attached (tracepoint and kprobe programs never
    // nest on a CPU; an fentry run nested in an interrupt could lose one add, never corrupt).
    let v = unsafe { &mut *value };
    match kind {
        Kind::Anon => v.totals.anon += bytes,
        Kind::File => v.totals.file += bytes,
        Kind::Kernel => v.totals.kernel += bytes,
        Kind::Freed(kmem) => {
            v.totals.kernel -= kmem;
            let rest = bytes - kmem;
            let from_anon = rest.min(v.totals.anon.max(0));
            v.totals.anon -= from_anon;
            v.totals.file -= rest - from_anon;
        }
    }
    if guest {
        v.totals.guest += bytes;
    }
    let total = v.totals.total();
    let pending = total - v.emitted_total;
    let due = first
        || pending >= get(&g::FLUSH_BYTES)
        || pending <= -get(&g::FLUSH_BYTES)
        || (pending != 0 && now.wrapping_sub(v.last_emit_ns) >= get(&g::FLUSH_NS));
    if !due {
        return Ok(());
    }
    emit(tid, tgid, memcg_id, v.totals, now, first);
    v.emitted_total = total;
    v.last_emit_ns = now;
    Ok(())
}

#[inline(always)]
fn emit(tid: u32, tgid: u32, memcg_id: u64, totals: ChargeTotals, now: u64, first: bool) {
    let event = ChargeEvent {
        kind: KIND_CHARGE,
        tid,
        tgid,
        first: first as u32,
        ts_ns: now,
        memcg_id,
        totals,
        comm: current_comm(),
    };
    // Waking the collector for every record costs the charging thread a wakeup (microseconds);
    // it reads the ring at every tick anyway. Wake it only when the ring is a quarter full.
    let flags = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= EVENTS_WAKE_BYTES {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    };
    if EVENTS.output(&event, flags).is_ok() {
        count(stat::EVENTS);
    } else {
        // The totals stay in CHARGES; the next record or sweep carries them.
        count(stat::RING_DROPS);
    }
}
