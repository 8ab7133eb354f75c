//! Loading and attaching the eBPF programs (tracepoint tier). Which programs to use is decided
//! before loading, from what this kernel has; the decision is recorded for `doctor` and captures.
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use oomtrace_common::{ChargeKey, ChargeValue, GuestRanges, globals as g, maps as m, stat};
use serde::Serialize;

use crate::{kernel_enums::ChargeItems, tracefs::Format};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oomtrace"));

/// One hook: which program serves it, through which tracepoint, or why it is off.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HookChoice {
    pub hook: &'static str,
    pub program: &'static str,
    pub tracepoint: &'static str,
    pub required: bool,
    /// "tracepoint" when used; otherwise "off".
    pub tier: &'static str,
    pub reason: String,
}

struct Hook {
    hook: &'static str,
    program: &'static str,
    category: &'static str,
    name: &'static str,
    tracepoint: &'static str,
    required: bool,
    /// Attached on demand (`Probes::attach_lazy`), not at start.
    lazy: bool,
}

const HOOKS: &[Hook] = &[
    Hook {
        hook: "charge",
        program: "memcg_lruvec_state",
        category: "memcg",
        name: "mod_memcg_lruvec_state",
        tracepoint: "memcg:mod_memcg_lruvec_state",
        required: true,
        lazy: false,
    },
    Hook {
        hook: "oom-victim",
        program: "oom_mark_victim",
        category: "oom",
        name: "mark_victim",
        tracepoint: "oom:mark_victim",
        required: true,
        lazy: false,
    },
    Hook {
        hook: "thread-exit",
        program: "sched_exit",
        category: "sched",
        name: "sched_process_exit",
        tracepoint: "sched:sched_process_exit",
        required: true,
        lazy: false,
    },
    Hook {
        hook: "reclaim-begin",
        program: "memcg_reclaim_begin",
        category: "vmscan",
        name: "mm_vmscan_memcg_reclaim_begin",
        tracepoint: "vmscan:mm_vmscan_memcg_reclaim_begin",
        required: false,
        lazy: false,
    },
    Hook {
        hook: "reclaim-end",
        program: "memcg_reclaim_end",
        category: "vmscan",
        name: "mm_vmscan_memcg_reclaim_end",
        tracepoint: "vmscan:mm_vmscan_memcg_reclaim_end",
        required: false,
        lazy: false,
    },
    Hook {
        hook: "guest-fault",
        program: "kvm_page_fault",
        category: "kvm",
        name: "kvm_page_fault",
        tracepoint: "kvm:kvm_page_fault",
        required: false,
        lazy: false,
    },
    Hook {
        hook: "guest-entry",
        program: "kvm_entry",
        category: "kvm",
        name: "kvm_entry",
        tracepoint: "kvm:kvm_entry",
        required: false,
        lazy: false,
    },
    Hook {
        hook: "guest-ram-fault",
        program: "guest_ram_fault",
        category: "exceptions",
        name: "page_fault_user",
        tracepoint: "exceptions:page_fault_user",
        required: false,
        lazy: true,
    },
];

/// The hook that tells guest RAM faults of TCG vCPUs and other qemu threads apart.
pub const GUEST_RAM_HOOK: &str = "guest-ram-fault";

/// The charge record's usual layout (`u64 id; int item; int val;`): the fast program loads these
/// offsets directly; any other layout gets the program that reads them with a helper.
const LRUVEC_FIXED: [(&str, u32); 3] = [("id", 8), ("item", 16), ("val", 20)];

fn offsets_are(tracefs: &Path, category: &str, name: &str, want: &[(&str, u32)]) -> bool {
    Format::read(tracefs, category, name).is_ok_and(|f| {
        want.iter()
            .all(|(field, off)| f.field(field).is_some_and(|x| x.offset == *off))
    })
}

/// Decides, per hook, whether it can be used on this kernel and which program variant serves
/// it: before anything is loaded.
pub fn plan(tracefs: &Path) -> Vec<HookChoice> {
    let has = |c: &str, n: &str| crate::tracefs::has_tracepoint(tracefs, c, n);
    let kvm = has("kvm", "kvm_page_fault") && has("kvm", "kvm_entry");
    HOOKS
        .iter()
        .map(|h| {
            let present = has(h.category, h.name);
            let mut program = h.program;
            let mut usable = present && (h.category != "kvm" || kvm);
            let mut reason = match (usable, h.category) {
                (true, _) if h.lazy => {
                    "tracepoint present; attached once a qemu guest RAM mapping is found".to_string()
                }
                (true, _) => "tracepoint present (kprobe/fentry tiers not built yet)".to_string(),
                (false, "kvm") => "kvm tracepoints absent (kvm module not loaded): guest RAM is told apart by thread class only".to_string(),
                (false, _) => format!("tracepoint {} is not available on this kernel", h.tracepoint),
            };
            if usable && h.hook == "charge" {
                if offsets_are(tracefs, h.category, h.name, &LRUVEC_FIXED) {
                    reason = "tracepoint present; usual record layout: fields loaded directly".into();
                } else {
                    program = "memcg_lruvec_state_any";
                    reason = "tracepoint present; unusual record layout: fields read with a helper (slower)".into();
                }
            }
            if usable && h.hook == GUEST_RAM_HOOK && !offsets_are(tracefs, h.category, h.name, &[("address", 8)]) {
                usable = false;
                reason = "exceptions:page_fault_user has an unexpected layout: guest RAM by address is off".into();
            }
            HookChoice {
                hook: h.hook,
                program,
                tracepoint: h.tracepoint,
                required: h.required,
                tier: if usable { "tracepoint" } else { "off" },
                reason,
            }
        })
        .collect()
}

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

fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct. Failure is harmless on kernels ≥ 5.11, which
    // account BPF memory to the memcg instead of RLIMIT_MEMLOCK.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

/// Whether this kernel loads and attaches an fentry and a kprobe program on the charge path
/// (`try_charge_memcg`), asked of the kernel itself with empty programs; the error otherwise.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KernelFunctionProbes {
    pub fentry: Result<(), String>,
    pub kprobe: Result<(), String>,
}

pub fn probe_kernel_functions() -> KernelFunctionProbes {
    const TARGET: &str = "try_charge_memcg";
    raise_memlock();
    let mut ebpf = match EbpfLoader::new().load(EBPF_OBJECT) {
        Ok(e) => e,
        Err(e) => {
            let msg = format!("cannot load the eBPF object: {e}");
            return KernelFunctionProbes {
                fentry: Err(msg.clone()),
                kprobe: Err(msg),
            };
        }
    };
    let fentry = (|| -> Result<()> {
        let btf = aya::Btf::from_sys_fs().context("no kernel BTF")?;
        let p: &mut aya::programs::FEntry = ebpf
            .program_mut("can_fentry")
            .context("can_fentry missing")?
            .try_into()?;
        p.load(TARGET, &btf)?;
        p.attach()?;
        Ok(())
    })()
    .map_err(|e| format!("{e:#}"));
    let kprobe = (|| -> Result<()> {
        let p: &mut aya::programs::KProbe = ebpf
            .program_mut("can_kprobe")
            .context("can_kprobe missing")?
            .try_into()?;
        p.load()?;
        p.attach(TARGET, 0)?;
        Ok(())
    })()
    .map_err(|e| format!("{e:#}"));
    // Dropping the object detaches and unloads both.
    drop(ebpf);
    KernelFunctionProbes { fentry, kprobe }
}

pub fn load(tracefs: &Path, items: &ChargeItems, opts: &Options) -> Result<Probes> {
    let choices = plan(tracefs);
    if let Some(missing) = choices.iter().find(|c| c.required && c.tier == "off") {
        bail!("{}: oomtrace needs it for {}", missing.reason, missing.hook);
    }
    if items.anon < 0 || items.file < 0 {
        bail!("this kernel's BTF has no NR_ANON_MAPPED/NR_FILE_PAGES in enum node_stat_item");
    }
    let lruvec = Format::read(tracefs, "memcg", "mod_memcg_lruvec_state")?;
    let victim = Format::read(tracefs, "oom", "mark_victim")?;
    let exit = Format::read(tracefs, "sched", "sched_process_exit")?;
    let reclaim_end =
        Format::read(tracefs, "vmscan", "mm_vmscan_memcg_reclaim_end").unwrap_or_default();
    let guest = choices
        .iter()
        .any(|c| (c.hook == "guest-fault" || c.hook == GUEST_RAM_HOOK) && c.tier == "tracepoint");

    let lv_id = lruvec.offset("memcg:mod_memcg_lruvec_state", "id")?;
    let lv_item = lruvec.offset("memcg:mod_memcg_lruvec_state", "item")?;
    let lv_val = lruvec.offset("memcg:mod_memcg_lruvec_state", "val")?;
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
        (g::FILTER_ON, filter),
        (g::GUEST_TRACKING, guest),
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
    loader.override_global(g::PAGE_SIZE, &page, true);
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
        for (hook, choice) in HOOKS.iter().zip(self.choices.iter_mut()) {
            if choice.tier != "tracepoint" || hook.lazy {
                continue;
            }
            let result = (|| -> Result<()> {
                let prog: &mut TracePoint = self
                    .ebpf
                    .program_mut(choice.program)
                    .with_context(|| {
                        format!("program {} missing from the eBPF object", choice.program)
                    })?
                    .try_into()?;
                prog.load()?;
                prog.attach(hook.category, hook.name)?;
                Ok(())
            })();
            if let Err(e) = result {
                if hook.required {
                    return Err(e.context(format!(
                        "attaching {} to {} failed",
                        choice.program, hook.tracepoint
                    )));
                }
                choice.tier = "off";
                choice.reason = format!("attach failed: {e:#}");
            }
        }
        Ok(())
    }

    /// Attaches a lazy hook now; Ok(false) when this kernel cannot have it. Idempotent.
    pub fn attach_lazy(&mut self, name: &str) -> Result<bool> {
        let Some((hook, choice)) = HOOKS
            .iter()
            .zip(self.choices.iter_mut())
            .find(|(h, _)| h.hook == name && h.lazy)
        else {
            return Ok(false);
        };
        if choice.tier != "tracepoint" {
            return Ok(false);
        }
        let prog: &mut TracePoint = self
            .ebpf
            .program_mut(choice.program)
            .with_context(|| format!("program {} missing from the eBPF object", choice.program))?
            .try_into()?;
        if prog.fd().is_ok() {
            return Ok(true);
        }
        let attached = prog
            .load()
            .and_then(|_| prog.attach(hook.category, hook.name).map(|_| ()));
        if let Err(e) = attached {
            choice.tier = "off";
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

    pub fn take_charges(&mut self) -> Result<BpfHashMap<MapData, ChargeKey, ChargeValue>> {
        let map = self
            .ebpf
            .take_map(m::CHARGES)
            .context("CHARGES map missing")?;
        Ok(BpfHashMap::try_from(map)?)
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

/// Sums the per-CPU loss counters: (ring drops, rare-event drops, map full).
pub fn read_stats(stats: &PerCpuArray<MapData, u64>) -> (u64, u64, u64) {
    let sum = |i: u32| stats.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
    (
        sum(stat::RING_DROPS),
        sum(stat::RARE_DROPS),
        sum(stat::MAP_FULL),
    )
}
