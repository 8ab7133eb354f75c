//! memcg:mod_memcg_lruvec_state → per (thread, memcg) charge totals, coalesced into ring records.
//! `account` is shared with the kernel-function tier (`charge_fn`): one aggregation, any hook.
//!
//! This runs for every memcg stat update on the machine, so the fast path is: read the item, drop
//! it unless it is one of the seven charge items, then one hash lookup for the thread's totals
//! (the memcg filter is asked only for a thread's first charge to a memcg).
//!
//! Measured per run on a page-fault storm (BPF_ENABLE_STATS, half the runs charge items): the
//! memcg id through three bpf_probe_read_kernel calls cost ~40 ns of a charge run, the precise
//! clock ~30 ns, the filter lookup ~20 ns; hence the BTF-typed program (plain loads, checked by
//! the verifier), the coarse clock for the flush check, and the filter on first charges only.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use oomtrace_common::{
    CHARGE_FIRST, CHARGE_SHMEM_COUNTED, CHARGE_SOCK_COUNTED, ChargeEvent, ChargeKey, ChargeTotals,
    ChargeValue, INTERRUPT_TID, KIND_CHARGE, stat,
};

use crate::{
    charge_fn::memcg_id,
    globals::{self as g, get},
    maps::{
        CHARGES, COUNTING, EVENTS, GUEST_SEEN, IN_GUEST_FAULT, SEEN_THREADS, WATCHED, count,
        ctx_field, current_comm, current_ids, jiffies, now_ns,
    },
};

/// The name of the interrupt pseudo-thread's records.
const INTERRUPT_COMM: &[u8; 16] = b"[interrupt]\0\0\0\0\0";

/// `*field += bytes`; `shared`: as one atomic instruction, for an entry charged from every CPU.
#[inline(always)]
fn add(field: &mut i64, bytes: i64, shared: bool) {
    if shared {
        use core::intrinsics::{AtomicOrdering, atomic_xadd};
        // SAFETY: `field` is an aligned i64 inside a map value, valid for the run; the add is
        // one atomic instruction (the target has no AtomicI64 in core).
        unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(field, bytes) };
    } else {
        *field += bytes;
    }
}

/// A quarter of the 4 MiB ring: time to wake the collector.
const EVENTS_WAKE_BYTES: u64 = 1 << 20;

#[derive(Clone, Copy)]
pub enum Kind {
    Anon,
    File,
    /// The shmem part of a page-cache charge: NR_SHMEM moves with NR_FILE_PAGES (two runs of the
    /// tracepoint, same thread), so it is a part of `file`, never added to the total.
    Shmem,
    /// Socket buffers (MEMCG_SOCK, from memcg:mod_memcg_state).
    Sock,
    Kernel,
    /// A free seen by the function tier (uncharge_batch): `bytes` freed, of which this many
    /// were kernel memory. The rest comes off the thread's anon first, then its page cache.
    Freed(i64),
}

/// Maps a node_stat_item to its kind and `val` to bytes. The tracepoint gives every item in pages,
/// the ones the kernel counts in bytes (slab) or kilobytes (kernel stacks) included: it converts
/// them (memcg_state_val_in_pages) before it fires, rounding a slab update below a page up to one.
#[inline(always)]
fn classify(item: i32, val: i64) -> Option<(Kind, i64)> {
    let bytes = val * get(&g::PAGE_SIZE);
    if item == get(&g::ITEM_ANON) {
        Some((Kind::Anon, bytes))
    } else if item == get(&g::ITEM_FILE) {
        Some((Kind::File, bytes))
    } else if item == get(&g::ITEM_SHMEM) {
        Some((Kind::Shmem, bytes))
    } else if item == get(&g::ITEM_PAGETABLE)
        || item == get(&g::ITEM_SEC_PAGETABLE)
        || item == get(&g::ITEM_KSTACK_KB)
        || item == get(&g::ITEM_SLAB_RECL_B)
        || item == get(&g::ITEM_SLAB_UNRECL_B)
    {
        Some((Kind::Kernel, bytes))
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
        let _ = account::<_, true>(&ctx, kind, bytes, f.2);
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
        let _ = account::<_, true>(&ctx, kind, bytes, id);
    }
    0
}

/// The stat value of a raw argument: a long since 7.0, an int before (whose upper half of the
/// raw argument is not its sign).
#[inline(always)]
fn lruvec_val(raw: u64) -> i64 {
    if get(&g::LRUVEC_VAL_LONG) != 0 {
        raw as i64
    } else {
        raw as i32 as i64
    }
}

/// The raw variant: the tracepoint's own arguments (memcg, item, val), no trace record filled.
/// Its recursion guard is its own (a classic tracepoint program shares one per CPU with every
/// other: since 7.0 tracepoint programs run preemptible, and a thread preempted inside any of
/// them made the kernel skip every other one on that CPU).
#[raw_tracepoint(tracepoint = "mod_memcg_lruvec_state")]
pub fn memcg_lruvec_state_raw(ctx: RawTracePointContext) -> u32 {
    let item = ctx.arg::<u64>(1) as i32;
    if let Some((kind, bytes)) = classify(item, lruvec_val(ctx.arg::<u64>(2)))
        && let Some(id) = memcg_id(ctx.arg::<u64>(0))
    {
        let _ = account::<_, true>(&ctx, kind, bytes, id);
    }
    0
}

/// The BTF-typed variant (tp_btf) of the raw one: the same arguments, but typed, so the memcg id
/// is three plain loads the verifier checked against this kernel's BTF at load time (a fault
/// reads 0), not three helper calls.
#[btf_tracepoint(function = "mod_memcg_lruvec_state")]
pub fn memcg_lruvec_state_btf(ctx: BtfTracePointContext) -> u32 {
    let item = ctx.arg::<u64>(1) as i32;
    let Some((kind, bytes)) = classify(item, lruvec_val(ctx.arg::<u64>(2))) else {
        return 0;
    };
    let memcg: *const u8 = ctx.arg(0);
    if memcg.is_null() {
        return 0;
    }
    // SAFETY: `memcg` is the tracepoint's typed `struct mem_cgroup *`; the offsets are this
    // kernel's (BTF) of mem_cgroup.css.cgroup, cgroup.kn and kernfs_node.id, so the verifier
    // types each loaded pointer and turns every load into a checked one (a bad address gives 0).
    let id = unsafe {
        let cgroup = *memcg
            .add(get(&g::OFF_MEMCG_CGROUP) as usize)
            .cast::<*const u8>();
        let kn = *cgroup
            .add(get(&g::OFF_CGROUP_KN) as usize)
            .cast::<*const u8>();
        *kn.add(get(&g::OFF_KN_ID) as usize).cast::<u64>()
    };
    if id != 0 {
        let _ = account::<_, true>(&ctx, kind, bytes, id);
    }
    0
}

/// Adds `bytes` of `kind` to the current thread's totals for `memcg_id` and sends a record when
/// enough changed (or enough time passed). The one aggregation behind every charge hook.
/// `COARSE`: the flush check reads the tick count (bpf_jiffies64, 5.5+: every kernel with the
/// memcg tracepoint) instead of the precise clock, a third of a charge run's cost; the record's
/// own time is always the precise clock.
#[inline(always)]
pub fn account<C: EbpfContext, const COARSE: bool>(
    ctx: &C,
    kind: Kind,
    bytes: i64,
    memcg_id: u64,
) -> Result<(), i32> {
    let (tid, tgid) = current_ids();
    account_for::<C, COARSE, false>(ctx, kind, bytes, memcg_id, tid, tgid)
}

/// `account` for a given thread; `INTERRUPT`: the charge was made while a task of another memcg
/// ran (a receive in softirq), and goes to the memcg's interrupt pseudo-thread (`INTERRUPT_TID`,
/// named `[interrupt]`), not to the task that was interrupted.
#[inline(always)]
pub fn account_for<C: EbpfContext, const COARSE: bool, const INTERRUPT: bool>(
    ctx: &C,
    kind: Kind,
    bytes: i64,
    memcg_id: u64,
    tid: u32,
    tgid: u32,
) -> Result<(), i32> {
    let key = ChargeKey {
        tid,
        _pad: 0,
        memcg_id,
    };
    let (value, first) = match CHARGES.get_ptr_mut(&key) {
        // An entry exists only for a memcg the filter let in: userspace removes the entries of
        // a memcg it ignores, together with telling the filter.
        Some(v) => (v, false),
        None => {
            if !counted(memcg_id, tgid) {
                return Ok(());
            }
            // The tracepoint programs (the only ones given NR_SHMEM) tell shmem apart; socket
            // buffers are counted once their program is attached.
            let mut flags = 0;
            if get(&g::ITEM_SHMEM) >= 0 {
                flags |= CHARGE_SHMEM_COUNTED;
            }
            if let Some(counting) = COUNTING.get(0) {
                flags |= *counting & CHARGE_SOCK_COUNTED;
            }
            let fresh = ChargeValue {
                tgid,
                flags,
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
    // Guest RAM is anonymous memory, or shmem where qemu backs it with a memfd.
    let guest = matches!(kind, Kind::Anon | Kind::Shmem)
        && get(&g::GUEST_TRACKING) != 0
        && GUEST_SEEN.get(0).is_some_and(|s| *s != 0)
        && IN_GUEST_FAULT.get_ptr(&tid).is_some();
    // The interrupt pseudo-thread's entry (tid 0, which is also every CPU's idle task: what
    // it charges is interrupt work too) is charged from every CPU at once; any other entry
    // only by its own thread.
    let shared = INTERRUPT || tid == INTERRUPT_TID;
    // SAFETY: `value` points into the map entry for this key, valid for the run; only this
    // thread updates a thread's entry, and one charge program is attached (tracepoint and
    // kprobe programs never nest on a CPU; an fentry run nested in an interrupt could lose one
    // add, never corrupt); the shared entry is added to atomically.
    let v = unsafe { &mut *value };
    match kind {
        Kind::Anon => add(&mut v.totals.anon, bytes, shared),
        Kind::File => add(&mut v.totals.file, bytes, shared),
        Kind::Shmem => add(&mut v.totals.shmem, bytes, shared),
        Kind::Sock => add(&mut v.totals.sock, bytes, shared),
        Kind::Kernel => add(&mut v.totals.kernel, bytes, shared),
        Kind::Freed(kmem) => {
            add(&mut v.totals.kernel, -kmem, shared);
            let rest = bytes - kmem;
            let from_anon = rest.min(v.totals.anon.max(0));
            add(&mut v.totals.anon, -from_anon, shared);
            add(&mut v.totals.file, -(rest - from_anon), shared);
        }
    }
    if guest {
        v.totals.guest += bytes;
    }
    let total = v.totals.total();
    let pending = total - v.emitted_total;
    if pending == 0 && !first {
        return Ok(());
    }
    // last_emit is on this program's flush clock (ticks or ns), never compared with the other.
    let (check_now, flush_after) = if COARSE {
        (jiffies(), get(&g::FLUSH_JIFFIES))
    } else {
        (now_ns(), get(&g::FLUSH_NS))
    };
    let due = first
        || pending >= get(&g::FLUSH_BYTES)
        || pending <= -get(&g::FLUSH_BYTES)
        || check_now.wrapping_sub(v.last_emit) >= flush_after;
    if !due {
        return Ok(());
    }
    let now = if COARSE { now_ns() } else { check_now };
    let flags = v.flags | if first { CHARGE_FIRST } else { 0 };
    let comm = if shared {
        *INTERRUPT_COMM
    } else {
        current_comm()
    };
    emit(tid, tgid, memcg_id, v.totals, now, flags, comm);
    v.emitted_total = total;
    v.last_emit = check_now;
    Ok(())
}

/// Whether a thread's first charge to `memcg_id` is counted. WATCHED: 1 = watched,
/// 0 = ignored. A memcg userspace has not seen yet (made in the last rescan interval) is
/// counted provisionally, so a process that starts in a new pod is seen from its first page;
/// userspace ignores it at the next sweep if it is not ours. oomtrace's own charges (its maps,
/// its /proc reads) are not the node's.
#[inline(always)]
fn counted(memcg_id: u64, tgid: u32) -> bool {
    if get(&g::FILTER_ON) != 0
        && let Some(v) = WATCHED.get_ptr(&memcg_id)
        // SAFETY: a map value pointer is valid for this program's run.
        && unsafe { *v } == 0
    {
        return false;
    }
    tgid != get(&g::SELF_TGID)
}

#[inline(always)]
fn emit(
    tid: u32,
    tgid: u32,
    memcg_id: u64,
    totals: ChargeTotals,
    now: u64,
    flags: u32,
    comm: [u8; 16],
) {
    let event = ChargeEvent {
        kind: KIND_CHARGE,
        tid,
        tgid,
        flags,
        ts_ns: now,
        memcg_id,
        totals,
        comm,
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
