//! Maps shared by the programs. All bounded; a failed insert or reservation is counted in STATS.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use oomtrace_common::{ChargeKey, ChargeValue, GuestRanges, OomStart, stat};

/// Records to userspace: coalesced charges and rare events. 4 MiB holds ~50k records.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Per (thread, memcg) cumulative charge totals. Written only here, read by userspace sweeps.
#[map]
pub static CHARGES: HashMap<ChargeKey, ChargeValue> = HashMap::with_max_entries(65536, 0);

/// Memcg ids (cgroup inode numbers) → 1 traced / 0 ignored, when FILTER_ON is set; ids not in
/// it yet are counted until userspace decides. Kept up to date by userspace.
#[map]
pub static WATCHED: HashMap<u64, u8> = HashMap::with_max_entries(65536, 0);

/// Threads that charged a watched memcg → the last such memcg. Filters reclaim and exit events.
#[map]
pub static SEEN_THREADS: HashMap<u32, u64> = HashMap::with_max_entries(65536, 0);

/// Threads serving a guest RAM fault → fault address: vCPUs between kvm:kvm_page_fault and the
/// next kvm:kvm_entry, and qemu threads whose last user fault hit a guest RAM mapping.
#[map]
pub static IN_GUEST_FAULT: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

/// qemu processes (tgid) → their guest RAM mappings. Filled by userspace from /proc/<pid>/maps.
#[map]
pub static GUEST_RAM: HashMap<u32, GuestRanges> = HashMap::with_max_entries(1024, 0);

/// Threads inside a memcg reclaim pass → its start time.
#[map]
pub static RECLAIM_START: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

/// Slot 0 is set once any vCPU thread took a guest page fault: until then the charge program
/// skips the IN_GUEST_FAULT lookup (an array read is cheaper than a hash lookup per charge).
#[map]
pub static GUEST_SEEN: Array<u32> = Array::with_max_entries(1, 0);

/// Slot 0: what the attached programs count beyond the charge hook's own kinds
/// (`CHARGE_SOCK_COUNTED`), set by userspace once they are attached: a map entry made before
/// says nothing it cannot vouch for.
#[map]
pub static COUNTING: Array<u32> = Array::with_max_entries(1, 0);

/// Kernel-function tier: a thread inside __mem_cgroup_charge → the kind of folio it charges
/// (anon when it has an mm, page cache when not), taken by its next try_charge_memcg. LRU: an
/// entry left by a charge that never reached try_charge_memcg (root memcg) ages out.
#[map]
pub static CHARGE_KIND: LruHashMap<u32, u32> = LruHashMap::with_max_entries(4096, 0);

/// Kernel-function tier: threads inside mem_cgroup_out_of_memory → when and for which memcg.
#[map]
pub static OOM_START: HashMap<u32, OomStart> = HashMap::with_max_entries(1024, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and tracepoint programs do not nest on one CPU.
        unsafe { *p += 1 };
    }
}

/// Sends a rare event one by one and wakes the collector at once (charge records do not wake it,
/// so "adaptive" wakeups would wait for them); counts it when the ring is full.
#[inline(always)]
pub fn send<T>(event: &T) {
    if EVENTS
        .output(event, u64::from(aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP))
        .is_ok()
    {
        count(stat::EVENTS);
    } else {
        count(stat::RARE_DROPS);
    }
}

/// A field of a tracepoint record, loaded straight from the context (no helper call: these run
/// for every memcg stat update or user fault on the machine). `offset` comes from frozen
/// .rodata, so the verifier sees a constant.
///
/// # Safety
/// `offset` must be a field offset of type `T` in this tracepoint's format.
#[inline(always)]
pub unsafe fn ctx_field<T: Copy>(ctx: &aya_ebpf::programs::TracePointContext, offset: usize) -> T {
    use aya_ebpf::EbpfContext as _;
    // SAFETY: the caller guarantees a field of type T at `offset` inside the record.
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// A u64 of kernel memory; None where nothing readable is.
#[inline(always)]
pub fn read_kernel_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one gives an error, not a fault.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(addr as *const u64) }.ok()
}

#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    (id as u32, (id >> 32) as u32)
}

#[inline(always)]
pub fn current_comm() -> [u8; 16] {
    aya_ebpf::helpers::bpf_get_current_comm().unwrap_or([0; 16])
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions; it reads the monotonic clock.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

/// The tick count (jiffies): a word read, where the precise clock reads the clocksource (and
/// bpf_ktime_get_coarse_ns is not allowed in tracing programs). Kernel 5.5+.
#[inline(always)]
pub fn jiffies() -> u64 {
    // SAFETY: bpf_jiffies64 has no preconditions.
    unsafe { aya_ebpf::helpers::bpf_jiffies64() }
}
