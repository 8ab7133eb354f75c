//! What the running kernel offers the planner: tracepoints and their layouts, hooked functions
//! in BTF and kallsyms, and whether it accepts fentry and kprobe programs at all (asked of the
//! kernel itself, with empty programs, before the real ones are loaded).
use std::{
    io::{BufRead, BufReader},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::EbpfLoader;
use serde::Serialize;

use super::{EBPF_OBJECT, plan::KernelFacts, raise_memlock};
use crate::{
    kernel_btf::{HOOKED_FUNCTIONS, KernelBtf},
    tracefs::{self, Format},
};

/// The tracepoints any hook may use.
const TRACEPOINTS: &[(&str, &str)] = &[
    ("memcg", "mod_memcg_lruvec_state"),
    ("memcg", "mod_memcg_state"),
    ("oom", "mark_victim"),
    ("sched", "sched_process_exit"),
    ("sched", "sched_process_exec"),
    ("signal", "signal_generate"),
    ("vmscan", "mm_vmscan_memcg_reclaim_begin"),
    ("vmscan", "mm_vmscan_memcg_reclaim_end"),
    ("kvm", "kvm_page_fault"),
    ("kvm", "kvm_entry"),
    ("exceptions", "page_fault_user"),
];

/// The charge record's usual layout (`u64 id; int item; int val;`): the fast program loads these
/// offsets directly; any other layout gets the program that reads them with a helper.
const LRUVEC_FIXED: [(&str, u32); 3] = [("id", 8), ("item", 16), ("val", 20)];

fn offsets_are(tracefs: &Path, category: &str, name: &str, want: &[(&str, u32)]) -> bool {
    Format::read(tracefs, category, name).is_ok_and(|f| {
        want.iter()
            .all(|(field, off)| f.field(field).is_some_and(|x| x.offset == *off))
    })
}

/// memcg:mod_memcg_state's layout as the sock program reads it: `u64 id` at 8, `int item` at
/// 16, and `int val` at 20 (before 7.0) or `long val` at 24 (7.0+). Some(long) when it is so,
/// None for any other layout.
fn memcg_state_val_long(tracefs: &Path) -> Option<bool> {
    let f = Format::read(tracefs, "memcg", "mod_memcg_state").ok()?;
    let at = |name: &str, offset: u32| f.field(name).is_some_and(|x| x.offset == offset);
    if !(at("id", 8) && at("item", 16)) {
        return None;
    }
    match f.field("val").map(|v| (v.offset, v.size)) {
        Some((20, 4)) => Some(false),
        Some((24, 8)) => Some(true),
        _ => None,
    }
}

/// `name` → its kallsyms symbol for each hooked function: the exact name, else a compiler
/// clone (`name.constprop.0`, `name.isra.0`) of it. Text symbols only.
pub fn kallsyms_symbols(text: impl BufRead) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines().map_while(Result::ok) {
        let mut parts = line.split_whitespace();
        let (Some(_addr), Some(kind), Some(sym)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let base = sym.split('.').next().unwrap_or(sym);
        if let Some(f) = HOOKED_FUNCTIONS.iter().find(|f| **f == base) {
            let exact = sym == base;
            let e = out.entry(f.to_string()).or_insert_with(|| sym.to_string());
            if exact {
                *e = sym.to_string();
            }
        }
    }
    out
}

/// Whether this kernel loads and attaches an empty fentry and kprobe program on the charge
/// function (any hooked function it has), or why not.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KernelFunctionProbes {
    pub fentry: Result<(), String>,
    pub kprobe: Result<(), String>,
}

pub fn probe_kernel_functions(
    fentry_target: Option<&str>,
    kprobe_target: Option<&str>,
) -> KernelFunctionProbes {
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
        let target = fentry_target.context("no hooked function in vmlinux BTF")?;
        let btf = aya::Btf::from_sys_fs().context("no kernel BTF")?;
        let p: &mut aya::programs::FEntry = ebpf
            .program_mut("can_fentry")
            .context("can_fentry missing")?
            .try_into()?;
        p.load(target, &btf)?;
        p.attach()?;
        Ok(())
    })()
    .map_err(|e| format!("{e:#}"));
    let kprobe = (|| -> Result<()> {
        let target = kprobe_target.context("no hooked function in /proc/kallsyms")?;
        let p: &mut aya::programs::KProbe = ebpf
            .program_mut("can_kprobe")
            .context("can_kprobe missing")?
            .try_into()?;
        p.load()?;
        p.attach(target, 0)?;
        Ok(())
    })()
    .map_err(|e| format!("{e:#}"));
    // Dropping the object detaches and unloads both.
    drop(ebpf);
    // The loader's text repeats the errno inside an empty verifier log: keep the first part.
    let short = |r: Result<(), String>| {
        r.map_err(|e| match e.split_once(". Verifier output") {
            Some((head, _)) => head.to_string(),
            None => e,
        })
    };
    KernelFunctionProbes {
        fentry: short(fentry),
        kprobe: short(kprobe),
    }
}

/// A variant switch: set to anything but the empty string.
fn switched_on(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Set (to anything): the tracepoint tier uses classic tracepoints even where raw ones serve.
pub const CLASSIC_TRACEPOINTS: &str = "OOMTRACE_CLASSIC_TRACEPOINTS";
/// Set (to anything): untyped raw-tracepoint programs even where BTF-typed ones serve.
pub const UNTYPED_RAW_TRACEPOINTS: &str = "OOMTRACE_UNTYPED_RAW_TRACEPOINTS";

/// Everything the planner needs. `probe`: ask the kernel (needs root); otherwise the fentry and
/// kprobe tiers count as unavailable with that said.
pub fn gather(
    tracefs: &Path,
    btf: Option<&KernelBtf>,
    probe: bool,
) -> (KernelFacts, Option<KernelFunctionProbes>) {
    let tracepoints = TRACEPOINTS
        .iter()
        .filter(|(c, n)| tracefs::has_tracepoint(tracefs, c, n))
        .map(|(c, n)| format!("{c}:{n}"))
        .collect();
    let symbols = std::fs::File::open("/proc/kallsyms")
        .map(|f| kallsyms_symbols(BufReader::new(f)))
        .unwrap_or_default();
    let btf_functions: std::collections::BTreeSet<String> = btf
        .map(|b| b.functions.iter().cloned().collect())
        .unwrap_or_default();
    const CHARGE: [&str; 2] = ["try_charge_memcg", "try_charge"];
    let probes = probe.then(|| {
        let f = CHARGE.iter().copied().find(|n| btf_functions.contains(*n));
        let k = CHARGE
            .iter()
            .find_map(|n| symbols.get(*n).map(String::as_str));
        probe_kernel_functions(f, k)
    });
    let (fentry, kprobe) = match &probes {
        Some(p) => (p.fentry.clone(), p.kprobe.clone()),
        None => (
            Err("not probed (needs root)".to_string()),
            Err("not probed (needs root)".to_string()),
        ),
    };
    let facts = KernelFacts {
        tracepoints,
        lruvec_fixed_layout: offsets_are(tracefs, "memcg", "mod_memcg_lruvec_state", &LRUVEC_FIXED),
        memcg_state_val_long: memcg_state_val_long(tracefs),
        memcg_v2: crate::cgroupfs::MemoryController::detect()
            .is_ok_and(|c| c.version == crate::cgroupfs::Version::V2),
        page_fault_user_layout: offsets_are(
            tracefs,
            "exceptions",
            "page_fault_user",
            &[("address", 8)],
        ),
        raw_tracepoints: btf
            .map(|b| b.raw_tracepoints.iter().cloned().collect())
            .unwrap_or_default(),
        classic_only: switched_on(CLASSIC_TRACEPOINTS),
        untyped_raw_only: switched_on(UNTYPED_RAW_TRACEPOINTS),
        btf_functions,
        symbols,
        memcg_id_path: btf.is_some_and(|b| b.memcg_id_path.is_some()),
        uncharge_gather: btf.is_some_and(|b| b.uncharge_gather.is_some()),
        fentry,
        kprobe,
    };
    (facts, probes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_prefers_the_exact_symbol_and_accepts_a_clone_of_text_only() {
        let text = "\
ffffffff81001000 t try_charge_memcg.constprop.0
ffffffff81002000 T __mem_cgroup_charge
ffffffff81003000 d mem_cgroup_out_of_memory
ffffffff81004000 t try_charge_memcg
ffffffffc0001000 t kvm_mmu_page_fault\t[kvm]
ffffffff81005000 T try_charge_memcg_extra
";
        let s = kallsyms_symbols(text.as_bytes());
        assert_eq!(s["try_charge_memcg"], "try_charge_memcg");
        assert_eq!(s["__mem_cgroup_charge"], "__mem_cgroup_charge");
        assert_eq!(s["kvm_mmu_page_fault"], "kvm_mmu_page_fault");
        assert!(!s.contains_key("mem_cgroup_out_of_memory"), "data symbol");
        assert_eq!(s.len(), 3);
    }
}
