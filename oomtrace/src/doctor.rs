//! `oomtrace doctor`: what this kernel offers and which programs oomtrace will use.
use std::{fs, io::Write, path::Path};

use anyhow::Result;
use serde::Serialize;

use crate::{
    bpf,
    cgroupfs::MemoryController,
    kernel_btf::{KernelBtf, VMLINUX_BTF},
    privileges, tracefs,
};

#[derive(Serialize)]
pub struct Report {
    pub kernel: String,
    pub root: bool,
    pub btf: bool,
    pub tracefs: Result<String, String>,
    pub kprobes: bool,
    /// memcg:mod_memcg_lruvec_state is there (6.14+): the charge tracepoint tier.
    pub memcg_tracepoint: bool,
    pub memory_controller: Result<(String, String), String>,
    pub hooks: Vec<bpf::HookChoice>,
    /// Asked of the kernel by loading empty programs (root only).
    pub kernel_functions: Option<bpf::KernelFunctionProbes>,
    /// The capabilities `tail`, `record` and `agent` keep once attached (all others dropped).
    pub kept_after_start: Vec<KeptCapability>,
    /// Which kinds of memory this kernel lets oomtrace tell apart, per thread and per memcg.
    pub memory_kinds: MemoryKinds,
}

/// A kind of memory, and whether this kernel counts it where oomtrace reads it.
#[derive(Serialize)]
pub struct KindAvailable {
    pub kind: &'static str,
    pub available: bool,
    /// Why not, when not.
    pub why_not: Option<String>,
}

#[derive(Serialize)]
pub struct MemoryKinds {
    /// From the charge hook: what each thread charged, by the kernel's stat item.
    pub per_thread: Vec<KindAvailable>,
    /// From the memcg's memory.stat (per memcg, never a thread's); empty when none was read.
    pub per_memcg: Vec<KindAvailable>,
}

/// What the charge items and the root memcg's memory.stat say of each kind.
fn memory_kinds(
    kbtf: Option<&KernelBtf>,
    ctl: Option<&MemoryController>,
    hooks: &[bpf::HookChoice],
) -> MemoryKinds {
    let charge_tracepoint = hooks
        .iter()
        .any(|h| h.hook == bpf::plan::CHARGE_HOOK && h.tier == bpf::plan::Tier::Tracepoint);
    let sock_hook = hooks.iter().find(|h| h.hook == bpf::plan::SOCK_HOOK);
    let sock = KindAvailable {
        kind: "sock",
        available: sock_hook.is_some_and(|h| !h.tier.is_off()),
        why_not: match sock_hook {
            Some(h) if !h.tier.is_off() => None,
            Some(h) => Some(h.reason.clone()),
            None => Some("no plan (tracefs not readable)".to_string()),
        },
    };
    let no_item = "this kernel's node_stat_item has no such item: the charge hook cannot see it";
    let function_tier = "the kernel-function tier of the charge hook (no memcg tracepoint here) \
        counts shmem as anon (faults) or page cache (writes): per thread it is null; the \
        memcg's memory.stat shmem is exact";
    let per_thread = match kbtf {
        Some(k) => {
            let i = &k.items;
            let shmem = KindAvailable {
                kind: "shmem",
                available: i.shmem >= 0 && charge_tracepoint,
                why_not: if i.shmem < 0 {
                    Some(no_item.to_string())
                } else {
                    (!charge_tracepoint).then(|| function_tier.to_string())
                },
            };
            [
                ("anon", i.anon),
                ("page_cache", i.file),
                ("pagetables", i.pagetable),
                ("sec_pagetables", i.sec_pagetable),
                ("kernel_stack", i.kernel_stack_kb),
                ("slab", i.slab_reclaimable_b.max(i.slab_unreclaimable_b)),
            ]
            .into_iter()
            .map(|(kind, item)| KindAvailable {
                kind,
                available: item >= 0,
                why_not: (item < 0).then(|| no_item.to_string()),
            })
            .chain([shmem, sock])
            .collect()
        }
        None => Vec::new(),
    };
    // The root memcg's, or (cgroup v2 before 5.13 has none at the root) a child's.
    let stat = ctl.and_then(|c| {
        c.memory_stat(&c.mount).or_else(|| {
            fs::read_dir(&c.mount)
                .ok()?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .find_map(|e| c.memory_stat(&e.path()))
        })
    });
    let v1 = ctl.is_some_and(|c| c.version == crate::cgroupfs::Version::V1);
    let per_memcg = match stat {
        Some(stat) => stat
            .kinds()
            .into_iter()
            .map(|(kind, bytes)| KindAvailable {
                kind,
                available: bytes.is_some(),
                why_not: match (bytes, kind, v1) {
                    (Some(_), _, _) => None,
                    (None, "sock", true) => Some(
                        "cgroup v1 counts TCP buffers apart (memory.kmem.tcp.*), outside the usage",
                    ),
                    (None, _, true) => Some("cgroup v1's memory.stat has no such key"),
                    (None, _, false) => Some("this kernel's memory.stat has no such key"),
                }
                .map(str::to_string),
            })
            .collect(),
        None => Vec::new(),
    };
    MemoryKinds {
        per_thread,
        per_memcg,
    }
}

#[derive(Serialize)]
pub struct KeptCapability {
    pub name: String,
    pub why: &'static str,
}

pub fn gather() -> Report {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tracefs = tracefs::find(root).map_err(|e| e.to_string());
    let kprobes = tracefs
        .as_ref()
        .map(|t| Path::new(t).join("kprobe_events").exists())
        .unwrap_or(false);
    let memcg_tracepoint = tracefs
        .as_ref()
        .is_ok_and(|t| tracefs::has_tracepoint(Path::new(t), "memcg", "mod_memcg_lruvec_state"));
    let kbtf = KernelBtf::load(Path::new(VMLINUX_BTF)).ok();
    let (hooks, kernel_functions) = match &tracefs {
        Ok(t) => {
            let (facts, probes) = bpf::facts::gather(Path::new(t), kbtf.as_ref(), root);
            (bpf::plan::plan(&facts, None).unwrap_or_default(), probes)
        }
        Err(_) => (Vec::new(), None),
    };
    let perf_event_to_open = hooks.iter().any(|h| {
        h.lazy && !h.tier.is_off() && h.attach.iter().any(bpf::plan::Attach::through_perf_event)
    }) && privileges::perf_events_need_sys_admin();
    let kept_after_start =
        privileges::still_needed_why(&caps::runtime::thread_all_supported(), perf_event_to_open)
            .into_iter()
            .map(|(c, why)| KeptCapability {
                name: c.to_string(),
                why,
            })
            .collect();
    let ctl = MemoryController::detect().ok();
    let memory_kinds = memory_kinds(kbtf.as_ref(), ctl.as_ref(), &hooks);
    Report {
        memory_kinds,
        kept_after_start,
        kernel,
        root,
        btf: Path::new(VMLINUX_BTF).exists(),
        tracefs: tracefs.map(|p| p.display().to_string()),
        kprobes,
        memcg_tracepoint,
        memory_controller: MemoryController::detect()
            .map(|c| (format!("{:?}", c.version), c.mount.display().to_string()))
            .map_err(|e| e.to_string()),
        hooks,
        kernel_functions,
    }
}

pub fn print(out: &mut dyn Write, r: &Report, json: bool) -> Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(r)?)?;
        return Ok(());
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    writeln!(out, "kernel            {}", r.kernel)?;
    writeln!(out, "running as root   {}", yes(r.root))?;
    writeln!(out, "BTF               {} ({VMLINUX_BTF})", yes(r.btf))?;
    match &r.tracefs {
        Ok(p) => writeln!(out, "tracefs           {p}")?,
        Err(e) => writeln!(out, "tracefs           missing: {e}")?,
    }
    let (major, minor) = kernel_version(&r.kernel);
    writeln!(
        out,
        "ring buffer       {} (BPF_MAP_TYPE_RINGBUF needs 5.8; oomtrace loads one)",
        yes((major, minor) >= (5, 8))
    )?;
    writeln!(
        out,
        "memcg tracepoint  {} (memcg:mod_memcg_lruvec_state, 6.14+; else the kprobe/fentry tier)",
        yes(r.memcg_tracepoint)
    )?;
    writeln!(
        out,
        "tp_btf            {} (needs BTF and 5.5)",
        yes(r.btf && (major, minor) >= (5, 5))
    )?;
    writeln!(out, "kprobes           {}", yes(r.kprobes))?;
    let probed = |r: &Result<(), String>| match r {
        Ok(()) => "yes (an empty program loaded and attached on the charge function)".to_string(),
        Err(e) => format!("no: {e}"),
    };
    match &r.kernel_functions {
        Some(k) => {
            writeln!(out, "fentry probe      {}", probed(&k.fentry))?;
            writeln!(out, "kprobe probe      {}", probed(&k.kprobe))?;
        }
        None => writeln!(out, "fentry/kprobe     not probed (needs root)")?,
    }
    match &r.memory_controller {
        Ok((v, m)) => writeln!(out, "memory controller cgroup {v} at {m}")?,
        Err(e) => writeln!(out, "memory controller missing: {e}")?,
    }
    writeln!(
        out,
        "hooks (the tier chosen, and why better ones were not):"
    )?;
    for h in &r.hooks {
        writeln!(
            out,
            "  {:<15} {:<10} {:<38} {}",
            h.hook, h.tier, h.target, h.reason
        )?;
    }
    writeln!(
        out,
        "capabilities kept by tail, record and agent once attached (every other one dropped):"
    )?;
    for k in &r.kept_after_start {
        writeln!(out, "  {:<20} {}", k.name, k.why)?;
    }
    let line = |kinds: &[KindAvailable]| -> (String, Vec<String>) {
        let seen: Vec<&str> = kinds
            .iter()
            .filter(|k| k.available)
            .map(|k| k.kind)
            .collect();
        let missing = kinds
            .iter()
            .filter_map(|k| Some(format!("{}: {}", k.kind, k.why_not.as_ref()?)))
            .collect();
        (seen.join(", "), missing)
    };
    writeln!(out, "memory kinds this kernel tells apart:")?;
    for (what, kinds) in [
        ("per thread", &r.memory_kinds.per_thread),
        ("per memcg", &r.memory_kinds.per_memcg),
    ] {
        if kinds.is_empty() {
            writeln!(out, "  {what:<11} not read here")?;
            continue;
        }
        let (seen, missing) = line(kinds);
        writeln!(out, "  {what:<11} {seen}")?;
        for m in missing {
            writeln!(out, "  {:<11} not counted: {m}", "")?;
        }
    }
    writeln!(
        out,
        "  (per thread: the charge hook, exact for the thread that charged; per memcg: memory.stat, never a thread's)"
    )?;
    Ok(())
}

/// "6.18.44-fc-v669" → (6, 18); unparsable → (0, 0).
pub fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_version_reads_major_minor_of_distribution_releases() {
        assert_eq!(kernel_version("6.18.44-fc-v669"), (6, 18));
        assert_eq!(kernel_version("5.14.21-150400.24.60-default"), (5, 14));
        assert_eq!(kernel_version("6.1.0-27-cloud-amd64"), (6, 1));
        assert_eq!(kernel_version(""), (0, 0));
    }
}
