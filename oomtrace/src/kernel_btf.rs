//! What the programs need from the running kernel's BTF: the values of enum node_stat_item
//! (their numbering changes between versions, and the memcg tracepoints report raw numbers),
//! the struct offsets from a memcg pointer to its id, and which hooked functions exist (Rust
//! eBPF has no CO-RE: these are injected as globals before loading).
use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result};
use btf_rs::{Btf, Type};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The numbers the charge program compares against; -1 when this kernel has no such item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChargeItems {
    pub anon: i32,
    pub file: i32,
    /// NR_SHMEM: the shmem part of NR_FILE_PAGES.
    pub shmem: i32,
    /// MEMCG_SOCK (enum memcg_stat_item): socket buffers, on memcg:mod_memcg_state.
    pub sock: i32,
    pub pagetable: i32,
    pub sec_pagetable: i32,
    pub kernel_stack_kb: i32,
    pub slab_reclaimable_b: i32,
    pub slab_unreclaimable_b: i32,
}

/// Byte offsets of `mem_cgroup.css.cgroup`, `cgroup.kn` and `kernfs_node.id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemcgIdPath {
    pub memcg_cgroup: u64,
    pub cgroup_kn: u64,
    pub kn_id: u64,
}

/// Byte offsets from a task to its memory css's cgroup: `task_struct.cgroups`,
/// `css_set.subsys[memory_cgrp_id]` (the array's offset plus the controller's slot) and
/// `cgroup_subsys_state.cgroup`. With `MemcgIdPath`'s last two, a task's memcg id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskMemcgPath {
    pub task_cgroups: u64,
    pub css_set_memory: u64,
    pub css_cgroup: u64,
}

/// memory.oom.group from a memory css: `cgroup_subsys_state.parent`, and `mem_cgroup.oom_group`
/// less `mem_cgroup.css` (the css is the memcg's first member; the difference keeps it exact).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OomGroupOffsets {
    pub css_parent: u64,
    pub css_oom_group: u64,
}

/// Byte offsets of `task_struct.pid`, `.tgid` and `.comm`: who a signal is for, read from the
/// task the raw signal tracepoint passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskIds {
    pub pid: u64,
    pub tgid: u64,
    pub comm: u64,
    /// From a memory css to its memcg's `memory.usage` (pages): mem_cgroup.memory +
    /// page_counter.usage - mem_cgroup.css. The usage at the signal, as the kernel counts it.
    pub css_usage: u64,
}

/// Byte offsets from a victim task to what oom:mark_victim prints of it, so its raw program can
/// read them itself: `mm->total_vm`, the rss counters (`mm->rss_stat[i].count`, the value
/// `get_mm_counter` returns and the tracepoint prints), `mm->pgtables_bytes` and
/// `signal->oom_score_adj`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VictimOffsets {
    pub task_mm: u64,
    pub task_signal: u64,
    pub mm_total_vm: u64,
    pub mm_pgtables_bytes: u64,
    pub mm_rss_file: u64,
    pub mm_rss_anon: u64,
    pub mm_rss_shmem: u64,
    pub signal_oom_score_adj: u64,
}

/// Byte offsets in `struct uncharge_gather` (what uncharge_batch frees in one go);
/// `nr_kmem` is -1 on kernels without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnchargeGather {
    pub memcg: u64,
    pub nr_memory: u64,
    pub nr_kmem: i64,
}

/// The kernel functions the kernel-function tier may hook, by any of their names.
pub const HOOKED_FUNCTIONS: &[&str] = &[
    "try_charge_memcg",
    "try_charge",
    "__mem_cgroup_charge",
    "mem_cgroup_charge",
    "mem_cgroup_try_charge",
    "uncharge_batch",
    "mem_cgroup_out_of_memory",
    "kvm_mmu_page_fault",
];

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelBtf {
    pub items: ChargeItems,
    /// None when a struct or member is missing (the kernel-function tier is then off).
    pub memcg_id_path: Option<MemcgIdPath>,
    /// None when a struct, member or the memory controller's id is missing: OOM and exec
    /// events then carry no memcg of their own.
    #[serde(default)]
    pub task_memcg_path: Option<TaskMemcgPath>,
    /// None: a member is missing (the kill-signal hook then uses its classic tracepoint).
    #[serde(default)]
    pub task_ids: Option<TaskIds>,
    /// None: a member is missing or shaped otherwise (mark_victim then keeps its classic
    /// tracepoint).
    #[serde(default)]
    pub victim: Option<VictimOffsets>,
    /// None: a member is missing (group kills are then one oom event per victim).
    #[serde(default)]
    pub oom_group: Option<OomGroupOffsets>,
    /// None: no struct uncharge_gather in BTF (frees are then not seen by the function tier).
    pub uncharge_gather: Option<UnchargeGather>,
    /// struct page's `mapping`: a page already in a file's mapping when it is charged is
    /// page cache, even where the kernel charges it for an mm (5.10 and older, and shmem).
    #[serde(default)]
    pub page_mapping: Option<u64>,
    /// The HOOKED_FUNCTIONS present in vmlinux BTF (what fentry can attach to; module
    /// functions such as kvm's are in the module's split BTF, not here).
    pub functions: Vec<String>,
    /// The RAW_TRACEPOINTS whose prototype here is the one their raw program reads.
    #[serde(default)]
    pub raw_tracepoints: Vec<String>,
    /// mod_memcg_lruvec_state's `val` argument is a long (7.0+), not an int.
    #[serde(default)]
    pub lruvec_val_long: bool,
    /// sched_process_exit has a `bool group_dead` argument (6.16+).
    #[serde(default)]
    pub exit_group_dead_arg: bool,
}

/// Tracepoints with a raw-tracepoint program that reads arguments, and the prototypes it reads
/// them by (`btf_trace_<name>`: a context pointer, then the TP_PROTO arguments; pointers by
/// pointee, typedefs by name). A prototype matches when it starts so: arguments added at the end
/// are not read. The memcg stat value became a long in 7.0 (LRUVEC_VAL_LONG tells the program);
/// sched_process_exit gained group_dead in 6.16 (EXIT_GROUP_DEAD_ARG). Programs that read no
/// argument need no entry.
pub const RAW_TRACEPOINTS: &[(&str, &[&str])] = &[
    (
        "mod_memcg_lruvec_state",
        &["void *", "mem_cgroup *", "int", "int"],
    ),
    (
        "mod_memcg_lruvec_state",
        &["void *", "mem_cgroup *", "int", "long int"],
    ),
    (
        "signal_generate",
        &[
            "void *",
            "int",
            "kernel_siginfo *",
            "task_struct *",
            "int",
            "int",
        ],
    ),
    ("mark_victim", &["void *", "task_struct *", "uid_t"]),
    ("sched_process_exit", &["void *", "task_struct *", "bool"]),
    ("sched_process_exit", &["void *", "task_struct *"]),
    (
        "sched_process_exec",
        &["void *", "task_struct *", "pid_t", "linux_binprm *"],
    ),
    (
        "mm_vmscan_memcg_reclaim_end",
        &["void *", "long unsigned int"],
    ),
    (
        "page_fault_user",
        &[
            "void *",
            "long unsigned int",
            "pt_regs *",
            "long unsigned int",
        ],
    ),
];

impl KernelBtf {
    /// Parsing the whole kernel BTF takes ~20 MiB for a moment; a short-lived child process
    /// (`oomtrace kernel-btf`) does it, so the long-running collector never holds that peak.
    /// Falls back to parsing here.
    pub fn load(path: &Path) -> Result<Self> {
        let child = std::env::current_exe().ok().and_then(|exe| {
            let out = std::process::Command::new(exe)
                .arg("kernel-btf")
                .arg(path)
                .output()
                .ok()?;
            if !out.status.success() {
                return None;
            }
            serde_json::from_slice::<Self>(&out.stdout).ok()
        });
        match child {
            Some(items) => Ok(items),
            None => Self::from_btf(path),
        }
    }

    pub fn from_btf(path: &Path) -> Result<Self> {
        let btf = Btf::from_file(path).with_context(|| {
            format!(
                "cannot read kernel BTF at {}; oomtrace needs CONFIG_DEBUG_INFO_BTF",
                path.display()
            )
        })?;
        let mut node = enum_values(&btf, "node_stat_item")?;
        // MEMCG_SOCK and the memcg's own items (a separate enum, numbered after the node ones).
        node.extend(enum_values(&btf, "memcg_stat_item").unwrap_or_default());
        let offset = |s: &str, m: &str| member_offset(&btf, s, m);
        let memcg_id_path = (|| {
            Some(MemcgIdPath {
                memcg_cgroup: offset("mem_cgroup", "css")?
                    + offset("cgroup_subsys_state", "cgroup")?,
                cgroup_kn: offset("cgroup", "kn")?,
                kn_id: offset("kernfs_node", "id")?,
            })
        })();
        let task_memcg_path = (|| {
            let subsys = enum_values(&btf, "cgroup_subsys_id").ok()?;
            let memory = u64::try_from(*subsys.get("memory_cgrp_id")?).ok()?;
            Some(TaskMemcgPath {
                task_cgroups: offset("task_struct", "cgroups")?,
                css_set_memory: offset("css_set", "subsys")? + memory * 8,
                css_cgroup: offset("cgroup_subsys_state", "cgroup")?,
            })
        })();
        let uncharge_gather = (|| {
            Some(UnchargeGather {
                memcg: offset("uncharge_gather", "memcg")?,
                nr_memory: offset("uncharge_gather", "nr_memory")?,
                nr_kmem: offset("uncharge_gather", "nr_kmem").map_or(-1, |o| o as i64),
            })
        })();
        let task_ids = (|| {
            Some(TaskIds {
                pid: offset("task_struct", "pid")?,
                tgid: offset("task_struct", "tgid")?,
                comm: offset("task_struct", "comm")?,
                css_usage: (offset("mem_cgroup", "memory")? + offset("page_counter", "usage")?)
                    .checked_sub(offset("mem_cgroup", "css")?)?,
            })
        })();
        let victim = victim_offsets(&btf);
        let oom_group = (|| {
            Some(OomGroupOffsets {
                css_parent: offset("cgroup_subsys_state", "parent")?,
                css_oom_group: offset("mem_cgroup", "oom_group")?
                    .checked_sub(offset("mem_cgroup", "css")?)?,
            })
        })();
        let mut raw_tracepoints = Vec::new();
        let functions = HOOKED_FUNCTIONS
            .iter()
            .filter(|f| {
                btf.resolve_types_by_name(f)
                    .is_ok_and(|ts| ts.iter().any(|t| matches!(t, Type::Func(_))))
            })
            .map(|f| f.to_string())
            .collect();
        // The first entry that matches a tracepoint is its prototype here (longer ones first).
        let mut matched: Vec<(&str, &[&str])> = Vec::new();
        for (name, proto) in RAW_TRACEPOINTS {
            if matched.iter().any(|(n, _)| n == name) {
                continue;
            }
            if raw_tp_params(&btf, name).is_some_and(|p| {
                p.len() >= proto.len() && p.iter().zip(proto.iter()).all(|(a, b)| a == b)
            }) {
                raw_tracepoints.push(name.to_string());
                matched.push((name, proto));
            }
        }
        // The raw signal program reads the target from its task: without the offsets, or
        // without the way to a task's memcg, the classic tracepoint serves.
        if task_ids.is_none() || task_memcg_path.is_none() || memcg_id_path.is_none() {
            raw_tracepoints.retain(|n| n != "signal_generate");
        }
        // The raw mark_victim reads its victim's pid and name (task_ids) and memory (victim).
        if task_ids.is_none() || victim.is_none() {
            raw_tracepoints.retain(|n| n != "mark_victim");
        }
        let proto_of = |n: &str| matched.iter().find(|(m, _)| *m == n).map(|(_, p)| *p);
        let lruvec_val_long =
            proto_of("mod_memcg_lruvec_state").is_some_and(|p| p.last() == Some(&"long int"));
        let exit_group_dead_arg = proto_of("sched_process_exit").is_some_and(|p| p.len() == 3);
        Ok(Self {
            items: ChargeItems::from_map(&node),
            memcg_id_path,
            task_memcg_path,
            task_ids,
            victim,
            oom_group,
            uncharge_gather,
            page_mapping: offset("page", "mapping"),
            functions,
            raw_tracepoints,
            lruvec_val_long,
            exit_group_dead_arg,
        })
    }
}

/// MM_FILEPAGES, MM_ANONPAGES and MM_SHMEMPAGES: the kernel's (anonymous) enum of rss
/// counters, the same since 2.6.x; checked against the array's length (NR_MM_COUNTERS, 4).
const MM_FILEPAGES: u64 = 0;
const MM_ANONPAGES: u64 = 1;
const MM_SHMEMPAGES: u64 = 3;
const NR_MM_COUNTERS: usize = 4;

fn victim_offsets(btf: &Btf) -> Option<VictimOffsets> {
    let offset = |s: &str, m: &str| member_offset(btf, s, m);
    // mm->rss_stat: struct percpu_counter rss_stat[NR_MM_COUNTERS] (6.2+); read .count, what
    // percpu_counter_read_positive reads.
    let (rss, member) = struct_member(btf, "mm_struct", "rss_stat")?;
    let Type::Array(array) = btf.resolve_chained_type(&member).ok()? else {
        return None;
    };
    let Type::Struct(counter) = btf.resolve_chained_type(&array).ok()? else {
        return None;
    };
    if array.len() != NR_MM_COUNTERS || btf.resolve_name(&counter).ok()? != "percpu_counter" {
        return None;
    }
    let size = counter.size() as u64;
    let count = find_member(btf, &counter, "count", 0)?;
    let at = |i: u64| rss + i * size + count;
    Some(VictimOffsets {
        task_mm: offset("task_struct", "mm")?,
        task_signal: offset("task_struct", "signal")?,
        mm_total_vm: offset("mm_struct", "total_vm")?,
        mm_pgtables_bytes: offset("mm_struct", "pgtables_bytes")?,
        mm_rss_file: at(MM_FILEPAGES),
        mm_rss_anon: at(MM_ANONPAGES),
        mm_rss_shmem: at(MM_SHMEMPAGES),
        signal_oom_score_adj: offset("signal_struct", "oom_score_adj")?,
    })
}

/// Member `member` of struct `name` (looking into anonymous members) and its byte offset.
fn struct_member(btf: &Btf, name: &str, member: &str) -> Option<(u64, btf_rs::Member)> {
    let types = btf.resolve_types_by_name(name).ok()?;
    let st = types.into_iter().find_map(|t| match t {
        Type::Struct(s) if !s.members.is_empty() => Some(s),
        _ => None,
    })?;
    find_member_of(btf, &st, member, 0)
}

fn find_member_of(
    btf: &Btf,
    st: &btf_rs::Struct,
    member: &str,
    base_bits: u64,
) -> Option<(u64, btf_rs::Member)> {
    for m in &st.members {
        let bits = base_bits + u64::from(m.bit_offset());
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == member {
            return Some((bits / 8, m.clone()));
        }
        if name.is_empty()
            && let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(m)
            && let Some(found) = find_member_of(btf, &inner, member, bits)
        {
            return Some(found);
        }
    }
    None
}

/// Byte offset of member `member` of struct `name`, looking into anonymous struct/union
/// members. None when this kernel has no such struct or member.
fn member_offset(btf: &Btf, name: &str, member: &str) -> Option<u64> {
    let types = btf.resolve_types_by_name(name).ok()?;
    let st = types.into_iter().find_map(|t| match t {
        Type::Struct(s) if !s.members.is_empty() => Some(s),
        _ => None,
    })?;
    find_member(btf, &st, member, 0)
}

/// The parameter types of tracepoint `name`'s raw prototype (`btf_trace_<name>`, a typedef of
/// a pointer to a function prototype), each as "int", "long unsigned int" or "<pointee> *".
fn raw_tp_params(btf: &Btf, name: &str) -> Option<Vec<String>> {
    let typedef = btf
        .resolve_types_by_name(&format!("btf_trace_{name}"))
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Typedef(t) => Some(t),
            _ => None,
        })?;
    let Type::Ptr(ptr) = btf.resolve_chained_type(&typedef).ok()? else {
        return None;
    };
    let Type::FuncProto(proto) = btf.resolve_chained_type(&ptr).ok()? else {
        return None;
    };
    proto
        .parameters
        .iter()
        .map(|p| match btf.resolve_chained_type(p).ok()? {
            Type::Ptr(ptr) => Some(match btf.resolve_chained_type(&ptr) {
                Ok(Type::Struct(s)) => format!("{} *", btf.resolve_name(&s).ok()?),
                Ok(Type::Void) | Err(_) => "void *".to_string(),
                Ok(_) => return None,
            }),
            Type::Int(i) => btf.resolve_name(&i).ok(),
            // By the typedef's own name (pid_t, gfp_t): what the program reads is that type.
            Type::Typedef(t) => btf.resolve_name(&t).ok(),
            _ => None,
        })
        .collect()
}

fn find_member(btf: &Btf, st: &btf_rs::Struct, member: &str, base_bits: u64) -> Option<u64> {
    find_member_of(btf, st, member, base_bits).map(|(offset, _)| offset)
}

impl ChargeItems {
    /// Pure mapping from enum member names; kept separate so it can be table-tested.
    pub fn from_map(node: &HashMap<String, i64>) -> Self {
        let get = |m: &HashMap<String, i64>, n: &str| m.get(n).map_or(-1, |v| *v as i32);
        Self {
            anon: get(node, "NR_ANON_MAPPED"),
            file: get(node, "NR_FILE_PAGES"),
            shmem: get(node, "NR_SHMEM"),
            sock: get(node, "MEMCG_SOCK"),
            pagetable: get(node, "NR_PAGETABLE"),
            sec_pagetable: get(node, "NR_SECONDARY_PAGETABLE"),
            kernel_stack_kb: get(node, "NR_KERNEL_STACK_KB"),
            slab_reclaimable_b: get(node, "NR_SLAB_RECLAIMABLE_B"),
            slab_unreclaimable_b: get(node, "NR_SLAB_UNRECLAIMABLE_B"),
        }
    }
}

fn enum_values(btf: &Btf, name: &str) -> Result<HashMap<String, i64>> {
    let types = btf
        .resolve_types_by_name(name)
        .with_context(|| format!("kernel BTF has no enum {name}"))?;
    let mut out = HashMap::new();
    for t in types {
        if let Type::Enum(e) = t {
            for m in &e.members {
                if let Ok(n) = btf.resolve_name(m) {
                    out.insert(n, m.val() as i32 as i64);
                }
            }
        }
    }
    if out.is_empty() {
        anyhow::bail!("kernel BTF enum {name} has no members");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_items_missing_members_become_minus_one() {
        let node: HashMap<String, i64> = [
            ("NR_ANON_MAPPED".to_string(), 17),
            ("NR_FILE_PAGES".to_string(), 18),
        ]
        .into();
        let items = ChargeItems::from_map(&node);
        assert_eq!(items.anon, 17);
        assert_eq!(items.file, 18);
        assert_eq!(items.sec_pagetable, -1);
    }
}
