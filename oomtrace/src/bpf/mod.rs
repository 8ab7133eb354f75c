//! Loading and attaching the eBPF programs. Which program serves each hook (fentry, kprobe or
//! tracepoint tier) is planned before loading from what this kernel has (`facts`, `plan`); the
//! plan is recorded for `doctor`, the start line and captures.
pub mod batch;
pub mod facts;
pub mod plan;

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit, KProbe, RawTracePoint, TracePoint},
};
use oomtrace_common::{ChargeKey, ChargeValue, GuestRanges, globals as g, maps as m, stat};

pub use facts::KernelFunctionProbes;
pub use plan::{Attach, GUEST_RAM_HOOK, HookChoice, Tier};

use crate::{kernel_btf::KernelBtf, tracefs::Format};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oomtrace"));

pub type ChargeMap = BpfHashMap<MapData, ChargeKey, ChargeValue>;
pub type ChargeBatch = batch::BatchReader<ChargeKey, ChargeValue>;

pub struct Options {
    pub filter: bool,
    pub flush_bytes: i64,
    pub flush_ns: u64,
}

/// Loaded, attached programs and the userspace handles of their maps.
pub struct Probes {
    pub ebpf: Ebpf,
    pub choices: Vec<HookChoice>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

fn page_size() -> i64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 { v } else { 4096 }
}

pub(crate) fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct. Failure is harmless on kernels ≥ 5.11, which
    // account BPF memory to the memcg instead of RLIMIT_MEMLOCK.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

/// Plans every hook for this kernel (asking it about fentry and kprobes), then loads the
/// programs with the globals they need. Nothing is attached yet (`Probes::attach`).
pub fn load(
    tracefs: &Path,
    kbtf: &KernelBtf,
    forced: Option<Tier>,
    opts: &Options,
) -> Result<Probes> {
    let (facts, _) = facts::gather(tracefs, Some(kbtf), true);
    let choices = plan::plan(&facts, forced).map_err(anyhow::Error::msg)?;
    if let Some(missing) = choices.iter().find(|c| c.required && c.tier.is_off()) {
        bail!(
            "oomtrace needs the {} hook and this kernel offers no way to it: {}",
            missing.hook,
            missing.reason
        );
    }
    let items = &kbtf.items;
    let charge_tp = choices
        .iter()
        .any(|c| c.hook == plan::CHARGE_HOOK && c.tier == Tier::Tracepoint);
    let sock_on = choices
        .iter()
        .any(|c| c.hook == plan::SOCK_HOOK && c.tier == Tier::Tracepoint);
    if charge_tp && (items.anon < 0 || items.file < 0) {
        bail!("this kernel's BTF has no NR_ANON_MAPPED/NR_FILE_PAGES in enum node_stat_item");
    }
    let lruvec = Format::read(tracefs, "memcg", "mod_memcg_lruvec_state").unwrap_or_default();
    let victim = Format::read(tracefs, "oom", "mark_victim")?;
    let exit = Format::read(tracefs, "sched", "sched_process_exit")?;
    let exec = Format::read(tracefs, "sched", "sched_process_exec").unwrap_or_default();
    let signal = Format::read(tracefs, "signal", "signal_generate").unwrap_or_default();
    let sig_field = |name: &str, default: u32| signal.field(name).map_or(default, |f| f.offset);
    let reclaim_end =
        Format::read(tracefs, "vmscan", "mm_vmscan_memcg_reclaim_end").unwrap_or_default();
    let guest = choices
        .iter()
        .any(|c| (c.hook == "guest-fault" || c.hook == GUEST_RAM_HOOK) && !c.tier.is_off());
    let field = |name: &str| lruvec.field(name).map_or(0, |f| f.offset);
    let (lv_id, lv_item, lv_val) = (field("id"), field("item"), field("val"));
    let path = kbtf.memcg_id_path;
    let v_pid = victim.offset("oom:mark_victim", "pid")?;
    let rec_nr = reclaim_end.field("nr_reclaimed").map_or(8, |f| f.offset);
    let filter = opts.filter as u32;
    let guest = guest as u32;
    let page = page_size();
    let ints = [
        (g::ITEM_ANON, items.anon),
        (g::ITEM_FILE, items.file),
        (g::ITEM_PAGETABLE, items.pagetable),
        (g::ITEM_SEC_PAGETABLE, items.sec_pagetable),
        (g::ITEM_KSTACK_KB, items.kernel_stack_kb),
        (g::ITEM_SLAB_RECL_B, items.slab_reclaimable_b),
        (g::ITEM_SLAB_UNRECL_B, items.slab_unreclaimable_b),
        // Only the tracepoint programs count by item; the others must not say they tell shmem.
        (g::ITEM_SHMEM, if charge_tp { items.shmem } else { -1 }),
        // Socket buffers only where their hook is on (the plan turns it off under a
        // kernel-function charge tier, and on cgroup v1).
        (g::ITEM_SOCK, if sock_on { items.sock } else { -1 }),
        (g::OFF_VICTIM_COMM, victim.offset_or_missing("comm")),
        (g::OFF_VICTIM_TOTAL_VM, victim.offset_or_missing("total_vm")),
        (g::OFF_VICTIM_ANON, victim.offset_or_missing("anon_rss")),
        (g::OFF_VICTIM_FILE, victim.offset_or_missing("file_rss")),
        (g::OFF_VICTIM_SHMEM, victim.offset_or_missing("shmem_rss")),
        (g::OFF_VICTIM_UID, victim.offset_or_missing("uid")),
        (g::OFF_VICTIM_PGTABLES, victim.offset_or_missing("pgtables")),
        (g::OFF_VICTIM_ADJ, victim.offset_or_missing("oom_score_adj")),
        (g::OFF_EXIT_GROUP_DEAD, exit.offset_or_missing("group_dead")),
    ];
    let uints = [
        (g::OFF_LRUVEC_ID, lv_id),
        (g::OFF_LRUVEC_ITEM, lv_item),
        (g::OFF_LRUVEC_VAL, lv_val),
        (g::OFF_VICTIM_PID, v_pid),
        (g::OFF_RECLAIM_NR, rec_nr),
        (
            g::OFF_EXEC_OLD_PID,
            exec.field("old_pid").map_or(12, |f| f.offset),
        ),
        (g::OFF_SIG_SIG, sig_field("sig", 8)),
        (g::OFF_SIG_CODE, sig_field("code", 16)),
        (g::OFF_SIG_COMM, sig_field("comm", 20)),
        (g::OFF_SIG_PID, sig_field("pid", 36)),
        (g::OFF_SIG_RESULT, sig_field("result", 44)),
        (g::FILTER_ON, filter),
        (g::GUEST_TRACKING, guest),
        (g::LRUVEC_VAL_LONG, kbtf.lruvec_val_long as u32),
        (
            g::STATE_VAL_LONG,
            facts.memcg_state_val_long.unwrap_or(false) as u32,
        ),
        (g::EXIT_GROUP_DEAD_ARG, kbtf.exit_group_dead_arg as u32),
        (g::SELF_TGID, std::process::id()),
    ];

    raise_memlock();
    let mut loader = EbpfLoader::new();
    for (name, v) in &ints {
        loader.override_global(name, v, true);
    }
    for (name, v) in &uints {
        loader.override_global(name, v, true);
    }
    loader.override_global(g::FLUSH_BYTES, &opts.flush_bytes, true);
    loader.override_global(g::FLUSH_NS, &opts.flush_ns, true);
    let flush_ticks = ticks(opts.flush_ns);
    loader.override_global(g::FLUSH_JIFFIES, &flush_ticks, true);
    loader.override_global(g::PAGE_SIZE, &page, true);
    if let Some(p) = &path {
        loader.override_global(g::OFF_MEMCG_CGROUP, &p.memcg_cgroup, true);
        loader.override_global(g::OFF_CGROUP_KN, &p.cgroup_kn, true);
        loader.override_global(g::OFF_KN_ID, &p.kn_id, true);
    }
    // A task's memcg also walks cgroup → kn → id, set just above.
    if let (Some(_), Some(t)) = (&path, &kbtf.task_memcg_path) {
        loader.override_global(g::TASK_MEMCG_ON, &1u32, true);
        loader.override_global(g::OFF_TASK_CGROUPS, &t.task_cgroups, true);
        loader.override_global(g::OFF_CSS_SET_MEMORY, &t.css_set_memory, true);
        loader.override_global(g::OFF_CSS_CGROUP, &t.css_cgroup, true);
    }
    if let (Some(_), Some(o)) = (&kbtf.task_memcg_path, &kbtf.oom_group) {
        loader.override_global(g::OOM_GROUP_ON, &1u32, true);
        loader.override_global(g::OFF_CSS_PARENT, &o.css_parent, true);
        loader.override_global(g::OFF_CSS_OOM_GROUP, &o.css_oom_group, true);
    }
    if let Some(t) = &kbtf.task_ids {
        loader.override_global(g::OFF_TASK_PID, &t.pid, true);
        loader.override_global(g::OFF_TASK_TGID, &t.tgid, true);
        loader.override_global(g::OFF_TASK_COMM, &t.comm, true);
        loader.override_global(g::OFF_CSS_USAGE, &t.css_usage, true);
    }
    if let Some(v) = &kbtf.victim {
        for (name, off) in [
            (g::OFF_TASK_MM, &v.task_mm),
            (g::OFF_TASK_SIGNAL, &v.task_signal),
            (g::OFF_MM_TOTAL_VM, &v.mm_total_vm),
            (g::OFF_MM_PGTABLES, &v.mm_pgtables_bytes),
            (g::OFF_MM_RSS_FILE, &v.mm_rss_file),
            (g::OFF_MM_RSS_ANON, &v.mm_rss_anon),
            (g::OFF_MM_RSS_SHMEM, &v.mm_rss_shmem),
            (g::OFF_SIGNAL_OOM_ADJ, &v.signal_oom_score_adj),
        ] {
            loader.override_global(name, off, true);
        }
    }
    if let Some(u) = &kbtf.uncharge_gather {
        loader.override_global(g::OFF_UG_MEMCG, &u.memcg, true);
        loader.override_global(g::OFF_UG_NR_MEMORY, &u.nr_memory, true);
        loader.override_global(g::OFF_UG_NR_KMEM, &u.nr_kmem, true);
    }
    // (Bound here: the loader borrows it until load.)
    let page_mapping = kbtf.page_mapping.and_then(|o| i64::try_from(o).ok());
    if let Some(off) = &page_mapping {
        loader.override_global(g::OFF_PAGE_MAPPING, off, true);
    }
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
        anyhow::anyhow!(
            "loading the eBPF programs failed: {e}; oomtrace needs root (CAP_BPF and CAP_PERFMON)"
        )
    })?;
    // Kept alive for as long as the programs: dropping it closes the log map's fd.
    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(l) => Some(l),
        Err(e) => {
            log::debug!("eBPF logging unavailable: {e}");
            None
        }
    };
    Ok(Probes {
        ebpf,
        choices,
        logger,
    })
}

impl Probes {
    /// Forwards the programs' rare log records (e.g. "charge map full") to the `log` crate.
    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    /// Attaches every planned program. Call after the WATCHED map is filled, so no charge of an
    /// unwatched memcg is ever counted.
    pub fn attach(&mut self) -> Result<()> {
        let mut btf = None;
        // The socket-buffer program first: once it runs, COUNTING says so, and every charge
        // map entry made after it (all of them) vouches for its sock figure.
        let mut order: Vec<usize> = (0..self.choices.len()).collect();
        order.sort_by_key(|i| self.choices[*i].hook != plan::SOCK_HOOK);
        for i in order {
            let choice = &mut self.choices[i];
            if choice.tier.is_off() || choice.lazy {
                continue;
            }
            let mut result = attach_all(&mut self.ebpf, &choice.attach, &mut btf);
            if let Err(e) = &result
                && !choice.fallback.is_empty()
            {
                // A raw program the kernel refused: the next simpler program instead (untyped
                // raw for typed, classic for untyped raw).
                let instead = if choice
                    .fallback
                    .iter()
                    .any(|a| matches!(a, Attach::RawTracepoint { .. }))
                {
                    "untyped raw tracepoint"
                } else {
                    "classic tracepoint"
                };
                log::warn!(
                    "{} hook: raw tracepoint refused ({e:#}); using its {instead}",
                    choice.hook
                );
                let reason = format!("{instead} (the raw program was refused: {e:#})");
                result = attach_all(&mut self.ebpf, &choice.fallback, &mut btf);
                if result.is_ok() {
                    choice.attach = std::mem::take(&mut choice.fallback);
                    choice.programs = choice.attach.iter().map(Attach::program).collect();
                    choice.reason = reason;
                }
            }
            if let Err(e) = result {
                if choice.required {
                    let denied = format!("{e:#}").contains("Permission denied");
                    return Err(e.context(format!(
                        "attaching the {} tier of the {} hook ({}) failed{}",
                        choice.tier,
                        choice.hook,
                        choice.target,
                        if denied {
                            " (perf events need CAP_PERFMON, or CAP_SYS_ADMIN where \
                             kernel.perf_event_paranoid is 3, as on Debian)"
                        } else {
                            ""
                        }
                    )));
                }
                choice.tier = Tier::Off;
                choice.reason = format!("attach failed: {e:#}");
                continue;
            }
            if choice.hook == plan::SOCK_HOOK {
                let counting = self
                    .ebpf
                    .map_mut(m::COUNTING)
                    .context("COUNTING map missing")?;
                Array::<_, u32>::try_from(counting)?
                    .set(0, &oomtrace_common::CHARGE_SOCK_COUNTED, 0)
                    .context("cannot tell the charge programs that sockets are counted")?;
            }
        }
        Ok(())
    }

    /// Runs of our attached programs the kernel skipped (a program already active on the CPU:
    /// a thread preempted inside an fentry program, or a hook firing in an interrupt while
    /// another program runs): events lost, shown with the drops. Every tier can lose them.
    pub fn skipped_runs(&self) -> u64 {
        self.skipped_runs_by_program().iter().map(|(_, n)| n).sum()
    }

    /// The same, program by program (for the debug log: which hook lost what).
    pub fn skipped_runs_by_program(&self) -> Vec<(&'static str, u64)> {
        self.choices
            .iter()
            .filter(|c| !c.tier.is_off())
            .flat_map(|c| c.programs.iter())
            .filter_map(|name| {
                let fd = self.ebpf.program(name)?.fd().ok()?;
                Some((*name, recursion_misses(std::os::fd::AsFd::as_fd(fd))?))
            })
            .collect()
    }

    /// A lazy hook not attached yet will open a perf event when it is (see
    /// `Attach::through_perf_event`): the capabilities kept after start must allow it.
    pub fn lazy_attach_opens_perf_events(&self) -> bool {
        self.choices.iter().any(|c| {
            c.lazy
                && !c.tier.is_off()
                && c.attach.iter().any(|a| {
                    a.through_perf_event()
                        && self
                            .ebpf
                            .program(a.program())
                            .is_none_or(|p| p.fd().is_err())
                })
        })
    }

    /// Attaches a lazy hook now; Ok(false) when this kernel cannot have it. Idempotent.
    pub fn attach_lazy(&mut self, name: &str) -> Result<bool> {
        let Some(choice) = self.choices.iter_mut().find(|c| c.hook == name && c.lazy) else {
            return Ok(false);
        };
        if choice.tier.is_off() {
            return Ok(false);
        }
        let loaded = choice.attach.first().is_some_and(|a| {
            self.ebpf
                .program(a.program())
                .is_some_and(|p| p.fd().is_ok())
        });
        if loaded {
            return Ok(true);
        }
        if let Err(e) = attach_all(&mut self.ebpf, &choice.attach, &mut None) {
            choice.tier = Tier::Off;
            choice.reason = format!("attach failed: {e:#}");
            return Ok(false);
        }
        choice.reason = "attached: a qemu guest RAM mapping was found".into();
        Ok(true)
    }

    pub fn take_guest_ram(&mut self) -> Result<BpfHashMap<MapData, u32, GuestRanges>> {
        let map = self
            .ebpf
            .take_map(m::GUEST_RAM)
            .context("GUEST_RAM map missing")?;
        Ok(BpfHashMap::try_from(map)?)
    }

    pub fn take_guest_seen(&mut self) -> Result<Array<MapData, u32>> {
        let map = self
            .ebpf
            .take_map(m::GUEST_SEEN)
            .context("GUEST_SEEN map missing")?;
        Ok(Array::try_from(map)?)
    }

    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(m::EVENTS)
            .context("EVENTS map missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The charge map, and a second handle on it for batched reads (None: no fd to spare, or
    /// batches would cost events). A batched read of a hash map holds the guard the kernel
    /// shares with kprobe and classic tracepoint programs across every empty bucket (65536
    /// here): preempted there, the collector made the kernel skip those programs on its CPU.
    /// Measured on Debian 7.x: the kprobe charge program skipped 560-2198 times per scenario
    /// (a thread at 88-94% of its charges), and oom:mark_victim once (a kill with no oom row).
    /// So batches only where no attached program shares that guard; key-by-key lookups hold it
    /// for one copy each.
    pub fn take_charges(&mut self) -> Result<(ChargeMap, Option<ChargeBatch>)> {
        use std::os::fd::AsFd as _;
        let map = self
            .ebpf
            .take_map(m::CHARGES)
            .context("CHARGES map missing")?;
        let shares_guard = self
            .choices
            .iter()
            .flat_map(|c| &c.attach)
            .find(|a| a.through_perf_event());
        if let Some(a) = shares_guard {
            log::debug!(
                "charge map read key by key: {} shares the map syscalls' guard",
                a.program()
            );
        }
        let fd = match &map {
            aya::maps::Map::HashMap(data) if shares_guard.is_none() => {
                data.fd().as_fd().try_clone_to_owned().ok()
            }
            _ => None,
        };
        Ok((BpfHashMap::try_from(map)?, fd.map(batch::BatchReader::new)))
    }

    pub fn take_watched(&mut self) -> Result<BpfHashMap<MapData, u64, u8>> {
        let map = self
            .ebpf
            .take_map(m::WATCHED)
            .context("WATCHED map missing")?;
        Ok(BpfHashMap::try_from(map)?)
    }

    pub fn take_stats(&mut self) -> Result<PerCpuArray<MapData, u64>> {
        let map = self.ebpf.take_map(m::STATS).context("STATS map missing")?;
        Ok(PerCpuArray::try_from(map)?)
    }
}

/// Runs the kernel skipped because the program was already active on that CPU
/// (`bpf_prog_info.recursion_misses`, 5.12+). aya 0.16 does not expose it.
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    /// The BPF_OBJ_GET_INFO_BY_FD member of union bpf_attr.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: bpf_prog_info is a plain C struct of integers; all zeroes is a valid value.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let attr = InfoByFd {
        bpf_fd: u32::try_from(fd.as_raw_fd()).ok()?,
        info_len: u32::try_from(size_of_val(&info)).ok()?,
        info: &raw mut info as u64,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for this command, and `info` is writable for
    // `info_len` bytes for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw const attr,
            size_of::<InfoByFd>(),
        )
    };
    (r == 0).then_some(info.recursion_misses)
}

/// `ns` in the kernel's ticks (jiffies), at least one. A tick is the resolution of the coarse
/// clocks (TICK_NSEC); where that cannot be read, 1 ms (HZ 1000, the shortest): the flush comes
/// early, never late.
fn ticks(ns: u64) -> u64 {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `res` is a valid, writable timespec for the duration of the call.
    let ok = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &raw mut res) } == 0;
    let tick = if ok && res.tv_sec == 0 && res.tv_nsec > 0 {
        res.tv_nsec as u64
    } else {
        1_000_000
    };
    ns.div_ceil(tick).max(1)
}

/// The kernel's BTF, parsed at the first program that needs it.
fn kernel_btf(btf: &mut Option<aya::Btf>) -> Result<&aya::Btf> {
    if btf.is_none() {
        *btf = Some(aya::Btf::from_sys_fs().context("cannot read the kernel BTF")?);
    }
    btf.as_ref().context("kernel BTF")
}

/// Loads and attaches one hook's programs, in plan order (companions and exits before the entry
/// program, so no entry is ever seen without its end). `btf` is parsed at the first fentry.
fn attach_all(ebpf: &mut Ebpf, attach: &[Attach], btf: &mut Option<aya::Btf>) -> Result<()> {
    for a in attach {
        let name = a.program();
        let prog = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?;
        match a {
            Attach::Tracepoint { category, name, .. } => {
                let p: &mut TracePoint = prog.try_into()?;
                p.load()?;
                p.attach(category, name)?;
            }
            Attach::RawTracepoint { name, .. } => {
                let p: &mut RawTracePoint = prog.try_into()?;
                p.load()?;
                p.attach(name)?;
            }
            Attach::BtfTracepoint { name, .. } => {
                let p: &mut BtfTracePoint = prog.try_into()?;
                p.load(name, kernel_btf(btf)?)?;
                p.attach()?;
            }
            Attach::FEntry { function, .. } | Attach::FExit { function, .. } => {
                let b = kernel_btf(btf)?;
                if matches!(a, Attach::FEntry { .. }) {
                    let p: &mut FEntry = prog.try_into()?;
                    p.load(function, b)?;
                    p.attach()?;
                } else {
                    let p: &mut FExit = prog.try_into()?;
                    p.load(function, b)?;
                    p.attach()?;
                }
            }
            Attach::KProbe { function, .. } | Attach::KRetProbe { function, .. } => {
                let p: &mut KProbe = prog.try_into()?;
                p.load()?;
                p.attach(function.as_str(), 0)?;
            }
        }
    }
    Ok(())
}

/// Sums the per-CPU loss counters: (ring drops, rare-event drops, map full).
pub fn read_stats(stats: &PerCpuArray<MapData, u64>) -> (u64, u64, u64) {
    let sum = |i: u32| stats.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
    (
        sum(stat::RING_DROPS),
        sum(stat::RARE_DROPS),
        sum(stat::MAP_FULL),
    )
}
