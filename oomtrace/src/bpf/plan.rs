//! Which program serves each hook, decided once before anything is loaded, from what this kernel
//! has (`KernelFacts`) and an optional forced tier. Pure: table-tested.
//!
//! Tiers, best first: fentry (+fexit) on the named kernel function, kprobe (+kretprobe) on it,
//! then the tracepoint. A hook has the tiers its kernel has means for; every tier feeds the
//! same maps and records, so the collector does not care which one runs.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// How a hook is served, best first; `Off`: not at all (an optional hook this kernel cannot
/// serve). Serialized as its name ("fentry", "kprobe", "tracepoint", "off").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Fentry,
    Kprobe,
    Tracepoint,
    #[value(skip)]
    Off,
}

impl Tier {
    /// The tiers a hook can be served by, best first.
    pub const ALL: [Tier; 3] = [Tier::Fentry, Tier::Kprobe, Tier::Tracepoint];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Fentry => "fentry",
            Tier::Kprobe => "kprobe",
            Tier::Tracepoint => "tracepoint",
            Tier::Off => "off",
        }
    }

    pub fn is_off(self) -> bool {
        self == Tier::Off
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the planner needs to know about the running kernel.
#[derive(Clone, Debug)]
pub struct KernelFacts {
    /// "category:name" of the tracepoints present.
    pub tracepoints: BTreeSet<String>,
    /// memcg:mod_memcg_lruvec_state has the usual layout (fields at 8/16/20).
    pub lruvec_fixed_layout: bool,
    /// exceptions:page_fault_user has `address` at offset 8.
    pub page_fault_user_layout: bool,
    /// memcg:mod_memcg_state's layout as the sock program reads it: Some(its `val` is a long),
    /// None for a layout it cannot read (facts::memcg_state_val_long).
    pub memcg_state_val_long: Option<bool>,
    /// The memory controller is on cgroup v2 (v1 charges socket buffers outside the usage).
    pub memcg_v2: bool,
    /// Tracepoints whose raw prototype (BTF) is what their raw program reads.
    pub raw_tracepoints: BTreeSet<String>,
    /// Classic tracepoint programs only, as asked for (OOMTRACE_CLASSIC_TRACEPOINTS).
    pub classic_only: bool,
    /// Untyped raw programs where BTF-typed ones would serve, as asked for
    /// (OOMTRACE_UNTYPED_RAW_TRACEPOINTS).
    pub untyped_raw_only: bool,
    /// Hooked functions present in vmlinux BTF (fentry targets).
    pub btf_functions: BTreeSet<String>,
    /// Hooked function → its kallsyms symbol (kprobe targets; a compiler clone such as
    /// `name.constprop.0` stands for `name`).
    pub symbols: BTreeMap<String, String>,
    /// BTF gave the offsets from a memcg pointer to its id.
    pub memcg_id_path: bool,
    /// BTF has struct uncharge_gather with memcg and nr_memory (frees readable at
    /// uncharge_batch; 7.x uncharges folios through an objcg and has neither).
    pub uncharge_gather: bool,
    /// Whether the kernel loaded and attached an empty fentry / kprobe program.
    pub fentry: Result<(), String>,
    pub kprobe: Result<(), String>,
}

/// One program to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attach {
    Tracepoint {
        program: &'static str,
        category: &'static str,
        name: &'static str,
    },
    RawTracepoint {
        program: &'static str,
        name: &'static str,
    },
    /// A raw tracepoint whose program has the tracepoint's typed (BTF) arguments (tp_btf).
    BtfTracepoint {
        program: &'static str,
        name: &'static str,
    },
    FEntry {
        program: &'static str,
        function: String,
    },
    FExit {
        program: &'static str,
        function: String,
    },
    KProbe {
        program: &'static str,
        function: String,
    },
    KRetProbe {
        program: &'static str,
        function: String,
    },
}

impl Attach {
    /// Attached through a perf event (kprobe and classic tracepoint programs). Two things
    /// follow: such programs run under the kernel's one per-CPU guard (bpf_prog_active) that
    /// they share with the bpf() syscall's map reads and writes, so while the collector is
    /// preempted inside such a syscall the kernel skips them on that CPU (raw tracepoint and
    /// fentry programs have a guard of their own); and attaching one opens a perf event, which
    /// Debian's kernels (perf_event_paranoid 3) allow only with CAP_SYS_ADMIN.
    pub fn through_perf_event(&self) -> bool {
        matches!(
            self,
            Attach::Tracepoint { .. } | Attach::KProbe { .. } | Attach::KRetProbe { .. }
        )
    }

    pub fn program(&self) -> &'static str {
        match self {
            Attach::Tracepoint { program, .. }
            | Attach::RawTracepoint { program, .. }
            | Attach::BtfTracepoint { program, .. }
            | Attach::FEntry { program, .. }
            | Attach::FExit { program, .. }
            | Attach::KProbe { program, .. }
            | Attach::KRetProbe { program, .. } => program,
        }
    }
}

/// One hook: the tier and programs chosen, or why it is off.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HookChoice {
    pub hook: &'static str,
    pub tier: Tier,
    /// The kernel function or tracepoint hooked (the first one tried when off).
    pub target: String,
    pub programs: Vec<&'static str>,
    pub required: bool,
    pub reason: String,
    #[serde(skip)]
    pub attach: Vec<Attach>,
    /// Attached on demand (`Probes::attach_lazy`), not at start.
    #[serde(skip)]
    pub lazy: bool,
    /// What is attached instead if the kernel refuses a raw program (its verifier, an
    /// unexpected prototype): the untyped raw programs for typed ones, the classic tracepoint
    /// programs for untyped raw ones.
    #[serde(skip)]
    pub fallback: Vec<Attach>,
}

struct FunctionHook {
    /// Names across kernel versions, tried in order.
    names: &'static [&'static str],
    /// (fentry program, kprobe program) on entry.
    entry: (&'static str, &'static str),
    /// (fexit program, kretprobe program) on return.
    exit: Option<(&'static str, &'static str)>,
    /// More functions hooked in the same tier: (function, fentry program, kprobe program,
    /// what they add, what is missing without them).
    companions: &'static [Companion],
    /// Reads memcg ids through BTF offsets.
    needs_memcg_path: bool,
    /// The charge hook's own order, measured in the kernel matrix: the tracepoint where the
    /// kernel has it (6.14+: kinds and frees exact), then kprobe, then fentry. An fentry
    /// program runs preemptible and the kernel skips it while it is active on the CPU (a
    /// charger preempted inside it): on Debian 7.3 (lazy preemption) fentry saw 71-97% of
    /// each thread's charges; kprobes (preemption off) and the tracepoint saw all of them.
    charge_order: bool,
}

struct Companion {
    /// Names across kernel versions, tried in order.
    names: &'static [&'static str],
    fentry: &'static str,
    kprobe: &'static str,
    adds: &'static str,
    without: &'static str,
}

struct TracepointHook {
    category: &'static str,
    name: &'static str,
    program: &'static str,
    /// A second tracepoint the hook needs (kvm_entry ends what kvm_page_fault starts).
    also: Option<(&'static str, &'static str, &'static str)>,
    /// The raw-tracepoint programs, used where the kernel's prototype is the one they read.
    raw: Option<RawVariant>,
}

/// Raw-tracepoint programs of a tracepoint hook: no trace record is filled for them, and each
/// has its own recursion guard, where the classic tracepoint (and kprobe) programs of a CPU
/// share one. Since 7.0 tracepoint programs run preemptible, so a thread preempted inside a
/// classic program made the kernel skip every other one on that CPU meanwhile.
struct RawVariant {
    program: &'static str,
    /// The raw program of the hook's second tracepoint (`also`).
    also: Option<&'static str>,
    /// Reads the tracepoint's arguments: then only where the kernel's BTF prototype is the one
    /// it reads (kernel_btf::RAW_TRACEPOINTS). One that reads none serves on every kernel.
    reads_args: bool,
    /// The same program with typed (BTF) arguments, where it reads kernel memory through them:
    /// plain loads the verifier checks instead of helper calls.
    typed: Option<&'static str>,
}

struct Hook {
    hook: &'static str,
    required: bool,
    lazy: bool,
    function: Option<FunctionHook>,
    tracepoint: Option<TracepointHook>,
    /// Said when no tier is possible and the hook is optional.
    without: &'static str,
}

pub const CHARGE_HOOK: &str = "charge";
const UNCHARGE: &str = "uncharge_batch";
const UNCHARGE_UNREADABLE: &str = "struct uncharge_gather has no memcg and nr_memory here \
     (5.10 counts pages by type; 7.x uncharges folios through an objcg)";
/// The hook that tells guest RAM faults of TCG vCPUs and other qemu threads apart.
pub const GUEST_RAM_HOOK: &str = "guest-ram-fault";
/// Socket buffers per thread (memcg:mod_memcg_state), with the tracepoint tier of the charges.
pub const SOCK_HOOK: &str = "sock";

const HOOKS: &[Hook] = &[
    Hook {
        hook: CHARGE_HOOK,
        required: true,
        lazy: false,
        function: Some(FunctionHook {
            names: &["try_charge_memcg", "try_charge"],
            entry: ("charge_fentry", "charge_kprobe"),
            exit: None,
            companions: &[
                Companion {
                    // (folio|page, mm, gfp) as __mem_cgroup_charge (5.17+) or mem_cgroup_charge
                    // (5.8-5.16); (page, mm, gfp, memcgp, compound) as mem_cgroup_try_charge
                    // before: the mm is the second argument in all.
                    names: &[
                        "__mem_cgroup_charge",
                        "mem_cgroup_charge",
                        "mem_cgroup_try_charge",
                    ],
                    fentry: "folio_charge_fentry",
                    kprobe: "folio_charge_kprobe",
                    adds: "the kind",
                    without: "all charges count as kernel memory",
                },
                Companion {
                    names: &[UNCHARGE],
                    fentry: "uncharge_fentry",
                    kprobe: "uncharge_kprobe",
                    adds: "frees",
                    without: "frees are not seen (totals only grow)",
                },
            ],
            needs_memcg_path: true,
            charge_order: true,
        }),
        tracepoint: Some(TracepointHook {
            category: "memcg",
            name: "mod_memcg_lruvec_state",
            program: "memcg_lruvec_state",
            also: None,
            raw: Some(RawVariant {
                program: "memcg_lruvec_state_raw",
                also: None,
                reads_args: true,
                typed: Some("memcg_lruvec_state_btf"),
            }),
        }),
        without: "",
    },
    Hook {
        hook: "oom",
        required: false,
        lazy: false,
        function: Some(FunctionHook {
            names: &["mem_cgroup_out_of_memory"],
            entry: ("oom_start_fentry", "oom_start_kprobe"),
            exit: Some(("oom_end_fexit", "oom_end_kretprobe")),
            companions: &[],
            needs_memcg_path: true,
            charge_order: false,
        }),
        tracepoint: None,
        without: "memcg OOMs are seen only when they kill (oom:mark_victim)",
    },
    Hook {
        hook: "oom-victim",
        required: true,
        lazy: false,
        function: None,
        tracepoint: Some(TracepointHook {
            category: "oom",
            name: "mark_victim",
            program: "oom_mark_victim",
            also: None,
            // Raw where the prototype is (task, uid) and BTF gives the victim's memory: the
            // classic program shares a per-CPU guard with the collector's map syscalls, and
            // the kernel skipping it loses a whole kill.
            raw: Some(RawVariant {
                program: "oom_mark_victim_raw",
                also: None,
                reads_args: true,
                typed: None,
            }),
        }),
        without: "",
    },
    Hook {
        hook: "thread-exit",
        required: true,
        lazy: false,
        function: None,
        tracepoint: Some(TracepointHook {
            category: "sched",
            name: "sched_process_exit",
            program: "sched_exit",
            also: None,
            raw: Some(RawVariant {
                program: "sched_exit_raw",
                also: None,
                reads_args: true,
                typed: None,
            }),
        }),
        without: "",
    },
    Hook {
        hook: "exec",
        required: false,
        lazy: false,
        function: None,
        tracepoint: Some(TracepointHook {
            category: "sched",
            name: "sched_process_exec",
            program: "sched_exec",
            also: None,
            raw: Some(RawVariant {
                program: "sched_exec_raw",
                also: None,
                reads_args: true,
                typed: None,
            }),
        }),
        without: "a thread's name after exec is learned from its next charge record",
    },
    Hook {
        hook: "kill-signal",
        required: false,
        lazy: false,
        function: None,
        tracepoint: Some(TracepointHook {
            category: "signal",
            name: "signal_generate",
            program: "kill_signal",
            also: None,
            // The raw program reads the target task itself (its memcg, whether or not it
            // charged yet); the classic one knows only threads that charged.
            raw: Some(RawVariant {
                program: "kill_signal_raw",
                also: None,
                reads_args: true,
                typed: None,
            }),
        }),
        without: "kills sent by other processes (kubelet, userspace OOM killers) are not seen",
    },
    Hook {
        hook: "reclaim-begin",
        required: false,
        lazy: false,
        function: None,
        tracepoint: Some(TracepointHook {
            category: "vmscan",
            name: "mm_vmscan_memcg_reclaim_begin",
            program: "memcg_reclaim_begin",
            also: None,
            raw: Some(RawVariant {
                program: "memcg_reclaim_begin_raw",
                also: None,
                reads_args: false,
                typed: None,
            }),
        }),
        without: "reclaim at the limit is not shown",
    },
    Hook {
        hook: "reclaim-end",
        required: false,
        lazy: false,
        function: None,
        tracepoint: Some(TracepointHook {
            category: "vmscan",
            name: "mm_vmscan_memcg_reclaim_end",
            program: "memcg_reclaim_end",
            also: None,
            raw: Some(RawVariant {
                program: "memcg_reclaim_end_raw",
                also: None,
                reads_args: true,
                typed: None,
            }),
        }),
        without: "reclaim at the limit is not shown",
    },
    Hook {
        hook: "guest-fault",
        required: false,
        lazy: false,
        function: Some(FunctionHook {
            names: &["kvm_mmu_page_fault"],
            entry: ("guest_fault_fentry", "guest_fault_kprobe"),
            exit: Some(("guest_fault_fexit", "guest_fault_kretprobe")),
            companions: &[],
            needs_memcg_path: false,
            charge_order: false,
        }),
        tracepoint: Some(TracepointHook {
            category: "kvm",
            name: "kvm_page_fault",
            program: "kvm_page_fault",
            also: Some(("kvm", "kvm_entry", "kvm_entry")),
            raw: Some(RawVariant {
                program: "kvm_page_fault_raw",
                also: Some("kvm_entry_raw"),
                reads_args: false,
                typed: None,
            }),
        }),
        without: "kvm not loaded: KVM guest RAM is told apart by thread class only",
    },
    Hook {
        hook: SOCK_HOOK,
        required: false,
        lazy: false,
        function: None,
        // Classic, not raw: the record's common_flags say whether a charge was made in
        // interrupt context (a receive in softirq), which the raw arguments do not.
        tracepoint: Some(TracepointHook {
            category: "memcg",
            name: "mod_memcg_state",
            program: "memcg_state",
            also: None,
            raw: None,
        }),
        without: "socket buffers are not counted per thread (memory.stat's sock is, per memcg)",
    },
    Hook {
        hook: GUEST_RAM_HOOK,
        required: false,
        lazy: true,
        function: None,
        tracepoint: Some(TracepointHook {
            category: "exceptions",
            name: "page_fault_user",
            program: "guest_ram_fault",
            also: None,
            raw: Some(RawVariant {
                program: "guest_ram_fault_raw",
                also: None,
                reads_args: true,
                typed: None,
            }),
        }),
        without: "TCG guest RAM is told apart by thread class only",
    },
];

/// A tier that cannot serve a hook, and why.
/// How a tier would serve a hook: what it attaches to, the programs, and the note doctor shows.
struct Served {
    target: String,
    attach: Vec<Attach>,
    note: String,
}

/// A tier's answer for a hook: served, or why not.
type Verdict = Result<Served, String>;

fn function_tier(h: &FunctionHook, tier: Tier, k: &KernelFacts) -> Verdict {
    if h.needs_memcg_path && !k.memcg_id_path {
        return Err("kernel BTF lacks mem_cgroup.css.cgroup → cgroup.kn → kernfs_node.id".into());
    }
    match tier {
        Tier::Fentry => {
            k.fentry.as_ref().map_err(|e| format!("refused ({e})"))?;
            let f = h
                .names
                .iter()
                .find(|n| k.btf_functions.contains(**n))
                .ok_or_else(|| {
                    format!(
                        "{} is not in vmlinux BTF (in a module, or inlined)",
                        h.names.join("/")
                    )
                })?;
            let f = f.to_string();
            let mut attach = Vec::new();
            let mut note = format!("fentry on {f}");
            companions(h, Tier::Fentry, k, &mut attach, &mut note);
            if let Some((prog, _)) = h.exit {
                attach.push(Attach::FExit {
                    program: prog,
                    function: f.clone(),
                });
                note.push_str(" and fexit");
            }
            attach.push(Attach::FEntry {
                program: h.entry.0,
                function: f.clone(),
            });
            Ok(Served {
                target: f,
                attach,
                note,
            })
        }
        Tier::Kprobe => {
            k.kprobe.as_ref().map_err(|e| format!("refused ({e})"))?;
            let (name, sym) = h
                .names
                .iter()
                .find_map(|n| k.symbols.get(*n).map(|s| (*n, s.clone())))
                .ok_or_else(|| format!("{} is not in /proc/kallsyms", h.names.join("/")))?;
            let mut attach = Vec::new();
            let mut note = format!("kprobe on {sym}");
            companions(h, Tier::Kprobe, k, &mut attach, &mut note);
            if let Some((_, prog)) = h.exit {
                attach.push(Attach::KRetProbe {
                    program: prog,
                    function: sym.clone(),
                });
                note.push_str(" and kretprobe");
            }
            attach.push(Attach::KProbe {
                program: h.entry.1,
                function: sym,
            });
            Ok(Served {
                target: name.to_string(),
                attach,
                note,
            })
        }
        Tier::Tracepoint => Err("no tracepoint".into()),
        Tier::Off => Err("not a tier to serve a hook by".into()),
    }
}

/// The companions of a function hook in `tier` (fentry or kprobe), each by the first of its
/// names this kernel has; the note says what each adds or what is missing without it.
fn companions(
    h: &FunctionHook,
    tier: Tier,
    k: &KernelFacts,
    attach: &mut Vec<Attach>,
    note: &mut String,
) {
    for c in h.companions {
        let first = c.names[0];
        if first == UNCHARGE && !k.uncharge_gather {
            note.push_str(&format!("; {}: {UNCHARGE_UNREADABLE}", c.without));
            continue;
        }
        let found = c.names.iter().find_map(|n| match tier {
            Tier::Fentry => k.btf_functions.contains(*n).then(|| (*n, n.to_string())),
            _ => k.symbols.get(*n).map(|s| (*n, s.clone())),
        });
        let Some((name, function)) = found else {
            note.push_str(&format!("; {first} missing: {}", c.without));
            continue;
        };
        attach.push(match tier {
            Tier::Fentry => Attach::FEntry {
                program: c.fentry,
                function,
            },
            _ => Attach::KProbe {
                program: c.kprobe,
                function,
            },
        });
        note.push_str(&format!(" (+ {name} for {})", c.adds));
    }
}

fn tracepoint_tier(hook: &Hook, t: &TracepointHook, k: &KernelFacts) -> Verdict {
    let has = |c: &str, n: &str| k.tracepoints.contains(&format!("{c}:{n}"));
    let target = format!("{}:{}", t.category, t.name);
    for (c, n) in [(t.category, t.name)]
        .into_iter()
        .chain(t.also.map(|(c, n, _)| (c, n)))
    {
        if !has(c, n) {
            return Err(format!(
                "tracepoint {c}:{n} is not available on this kernel"
            ));
        }
    }
    let lazy = if hook.lazy {
        "; attached once a qemu guest RAM mapping is found"
    } else {
        ""
    };
    // The raw variant where this kernel's prototype is the one its program reads (the charge
    // program also needs the memcg id path).
    if let Some(raw) = &t.raw
        && !k.classic_only
        && (!raw.reads_args || k.raw_tracepoints.contains(t.name))
        && (hook.hook != CHARGE_HOOK || k.memcg_id_path)
    {
        let mut attach = Vec::new();
        if let (Some((_, name, _)), Some(program)) = (t.also, raw.also) {
            attach.push(Attach::RawTracepoint { program, name });
        }
        let typed = raw.typed.filter(|_| !k.untyped_raw_only);
        attach.push(match typed {
            Some(program) => Attach::BtfTracepoint {
                program,
                name: t.name,
            },
            None => Attach::RawTracepoint {
                program: raw.program,
                name: t.name,
            },
        });
        let how = match (typed, raw.reads_args) {
            (Some(_), _) => "typed (BTF) arguments, kernel fields loaded directly",
            (None, true) => "arguments read directly",
            (None, false) => "reads no argument",
        };
        return Ok(Served {
            target,
            attach,
            note: format!("raw tracepoint {}: {how}{lazy}", t.name),
        });
    }
    let mut program = t.program;
    let mut note = format!("tracepoint present{lazy}");
    if hook.hook == CHARGE_HOOK {
        if k.lruvec_fixed_layout {
            note = "tracepoint; usual record layout: fields loaded directly".into();
        } else {
            program = "memcg_lruvec_state_any";
            note = "tracepoint; unusual record layout: fields read with a helper (slower)".into();
        }
    }
    if hook.hook == GUEST_RAM_HOOK && !k.page_fault_user_layout {
        return Err(format!("{target} has an unexpected layout"));
    }
    if hook.hook == SOCK_HOOK {
        if k.memcg_state_val_long.is_none() {
            return Err(format!("{target} has an unexpected layout"));
        }
        if !k.memcg_v2 {
            return Err("cgroup v1 charges socket buffers outside the memory usage \
                 (memory.kmem.tcp.*), and the tracepoint never sees them"
                .into());
        }
    }
    let mut attach = Vec::new();
    if let Some((category, name, program)) = t.also {
        attach.push(Attach::Tracepoint {
            program,
            category,
            name,
        });
    }
    attach.push(Attach::Tracepoint {
        program,
        category: t.category,
        name: t.name,
    });
    Ok(Served {
        target,
        attach,
        note,
    })
}

/// The plan for every hook; Err names the hook a forced tier cannot serve and why.
pub fn plan(k: &KernelFacts, forced: Option<Tier>) -> Result<Vec<HookChoice>, String> {
    let mut choices: Vec<HookChoice> = HOOKS
        .iter()
        .map(|h| choose(h, k, forced))
        .collect::<Result<_, _>>()?;
    // Socket buffers join the tracepoint tier's charge totals; a kernel-function tier counts
    // them already, as kernel memory (try_charge_memcg without a folio).
    let charge_tracepoint = choices
        .iter()
        .any(|c| c.hook == CHARGE_HOOK && c.tier == Tier::Tracepoint);
    if let Some(sock) = choices.iter_mut().find(|c| c.hook == SOCK_HOOK)
        && !charge_tracepoint
        && !sock.tier.is_off()
    {
        sock.tier = Tier::Off;
        sock.programs.clear();
        sock.attach.clear();
        sock.reason = "the charge hook runs on a kernel function, which counts socket buffers \
             as kernel memory"
            .into();
    }
    Ok(choices)
}

fn choose(h: &Hook, k: &KernelFacts, forced: Option<Tier>) -> Result<HookChoice, String> {
    let has_tier = |t: Tier| match t {
        Tier::Fentry | Tier::Kprobe => h.function.is_some(),
        Tier::Tracepoint => h.tracepoint.is_some(),
        Tier::Off => false,
    };
    // A forced tier applies to the hooks that have it. Tracepoint-only hooks (the baseline)
    // keep their tracepoint under a forced fentry/kprobe; function-only hooks are off under a
    // forced tracepoint tier.
    let tiers: Vec<Tier> = match forced {
        Some(t) if has_tier(t) => vec![t],
        Some(Tier::Tracepoint) => Vec::new(),
        Some(_) => vec![Tier::Tracepoint],
        None if h.function.as_ref().is_some_and(|f| f.charge_order) => {
            [Tier::Tracepoint, Tier::Kprobe, Tier::Fentry]
                .into_iter()
                .filter(|t| has_tier(*t))
                .collect()
        }
        None => Tier::ALL.into_iter().filter(|t| has_tier(*t)).collect(),
    };
    let first_target = h
        .function
        .as_ref()
        .map(|f| f.names[0].to_string())
        .or_else(|| {
            h.tracepoint
                .as_ref()
                .map(|t| format!("{}:{}", t.category, t.name))
        })
        .unwrap_or_default();
    let evaluate = |tier: Tier| match (tier, &h.function, &h.tracepoint) {
        (Tier::Tracepoint, _, Some(t)) => Some(tracepoint_tier(h, t, k)),
        (Tier::Fentry | Tier::Kprobe, Some(f), _) => Some(function_tier(f, tier, k)),
        _ => None,
    };
    let mut why_not = Vec::new();
    for (i, tier) in tiers.iter().enumerate() {
        let Some(verdict) = evaluate(*tier) else {
            continue;
        };
        match verdict {
            Ok(Served {
                target,
                attach,
                note,
            }) => {
                let mut reason = note;
                // Also what the kernel said of the tiers after this one: doctor shows it all.
                for later in &tiers[i + 1..] {
                    if let Some(Err(e)) = evaluate(*later) {
                        why_not.push(format!("{}: {e}", later.name()));
                    }
                }
                if !why_not.is_empty() {
                    reason.push_str(&format!(" ({})", why_not.join("; ")));
                }
                if forced == Some(*tier) {
                    reason.push_str(" [forced]");
                }
                let typed = attach
                    .iter()
                    .any(|a| matches!(a, Attach::BtfTracepoint { .. }));
                let raw = attach
                    .iter()
                    .any(|a| matches!(a, Attach::RawTracepoint { .. }));
                let fallback = match &h.tracepoint {
                    Some(t) if typed || raw => {
                        let instead = KernelFacts {
                            untyped_raw_only: true,
                            classic_only: !typed,
                            ..k.clone()
                        };
                        tracepoint_tier(h, t, &instead)
                            .map(|s| s.attach)
                            .unwrap_or_default()
                    }
                    _ => Vec::new(),
                };
                return Ok(HookChoice {
                    hook: h.hook,
                    tier: *tier,
                    target,
                    programs: attach.iter().map(Attach::program).collect(),
                    required: h.required,
                    reason,
                    attach,
                    lazy: h.lazy,
                    fallback,
                });
            }
            Err(e) => why_not.push(format!("{}: {e}", tier.name())),
        }
    }
    if let Some(t) = forced.filter(|t| has_tier(*t))
        && h.required
    {
        return Err(format!(
            "hook {}: the forced {} tier cannot be used here: {}",
            h.hook,
            t.name(),
            why_not.join("; ")
        ));
    }
    if tiers.is_empty() {
        why_not.push("tracepoint tier forced, and this hook has no tracepoint".into());
    }
    let mut reason = why_not.join("; ");
    if !h.without.is_empty() {
        reason.push_str(&format!(": {}", h.without));
    }
    Ok(HookChoice {
        hook: h.hook,
        tier: Tier::Off,
        target: first_target,
        programs: Vec::new(),
        required: h.required,
        reason,
        attach: Vec::new(),
        lazy: h.lazy,
        fallback: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program any plan can attach, by the names the table and the planner use.
    fn program_names() -> Vec<&'static str> {
        let mut names = vec!["memcg_lruvec_state_any"];
        for h in HOOKS {
            if let Some(f) = &h.function {
                names.extend([f.entry.0, f.entry.1]);
                if let Some((a, b)) = f.exit {
                    names.extend([a, b]);
                }
                for c in f.companions {
                    names.extend([c.fentry, c.kprobe]);
                }
            }
            if let Some(t) = &h.tracepoint {
                names.push(t.program);
                if let Some((_, _, p)) = t.also {
                    names.push(p);
                }
                if let Some(r) = &t.raw {
                    names.push(r.program);
                    names.extend(r.also);
                    names.extend(r.typed);
                }
            }
        }
        names
    }

    /// The names the plan and the loader ask the built eBPF object for (programs, maps) are in
    /// it: a program renamed on one side fails here, without root, not on the one kernel whose
    /// tier picks it.
    #[test]
    fn every_program_and_map_the_loader_can_ask_for_is_in_the_built_object() {
        let obj = match aya_obj::Object::parse(super::super::EBPF_OBJECT) {
            Ok(o) => o,
            Err(e) => panic!("the built eBPF object does not parse: {e}"),
        };
        let missing: Vec<&str> = program_names()
            .into_iter()
            .filter(|p| !obj.programs.contains_key(*p))
            .collect();
        assert!(
            missing.is_empty(),
            "programs not in the object: {missing:?}"
        );
        use oomtrace_common::maps as m;
        for map in [
            m::EVENTS,
            m::CHARGES,
            m::WATCHED,
            m::STATS,
            m::SEEN_THREADS,
            m::IN_GUEST_FAULT,
            m::RECLAIM_START,
            m::GUEST_RAM,
            m::GUEST_SEEN,
            m::CHARGE_KIND,
            m::OOM_START,
            m::COUNTING,
        ] {
            assert!(obj.maps.contains_key(map), "map {map} not in the object");
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    const ALL_TRACEPOINTS: &[&str] = &[
        "memcg:mod_memcg_lruvec_state",
        "memcg:mod_memcg_state",
        "oom:mark_victim",
        "sched:sched_process_exit",
        "sched:sched_process_exec",
        "vmscan:mm_vmscan_memcg_reclaim_begin",
        "vmscan:mm_vmscan_memcg_reclaim_end",
        "kvm:kvm_page_fault",
        "kvm:kvm_entry",
        "exceptions:page_fault_user",
        "signal:signal_generate",
    ];

    /// This build machine: every tracepoint, fentry refused, no kprobes.
    fn tracepoints_only() -> KernelFacts {
        KernelFacts {
            tracepoints: set(ALL_TRACEPOINTS),
            lruvec_fixed_layout: true,
            page_fault_user_layout: true,
            memcg_state_val_long: Some(false),
            memcg_v2: false,
            raw_tracepoints: set(&[
                "mod_memcg_lruvec_state",
                "page_fault_user",
                "sched_process_exit",
                "sched_process_exec",
                "mm_vmscan_memcg_reclaim_end",
                "mark_victim",
                "signal_generate",
            ]),
            classic_only: false,
            untyped_raw_only: false,
            btf_functions: set(&[
                "try_charge_memcg",
                "__mem_cgroup_charge",
                "uncharge_batch",
                "mem_cgroup_out_of_memory",
            ]),
            symbols: BTreeMap::new(),
            memcg_id_path: true,
            uncharge_gather: true,
            fentry: Err("EPERM".into()),
            kprobe: Err("no kprobe PMU".into()),
        }
    }

    /// A Debian 6.1 kernel: no memcg tracepoint, fentry and kprobes allowed, kvm a module.
    fn debian_6_1() -> KernelFacts {
        let mut symbols = BTreeMap::new();
        for f in [
            "try_charge_memcg",
            "__mem_cgroup_charge",
            "uncharge_batch",
            "mem_cgroup_out_of_memory",
        ] {
            symbols.insert(f.to_string(), f.to_string());
        }
        symbols.insert("kvm_mmu_page_fault".into(), "kvm_mmu_page_fault".into());
        KernelFacts {
            tracepoints: ALL_TRACEPOINTS
                .iter()
                .filter(|t| !t.starts_with("memcg:"))
                .map(|t| t.to_string())
                .collect(),
            fentry: Ok(()),
            kprobe: Ok(()),
            symbols,
            ..tracepoints_only()
        }
    }

    fn hook<'a>(plan: &'a [HookChoice], name: &str) -> &'a HookChoice {
        plan.iter().find(|c| c.hook == name).expect("hook in plan")
    }

    #[test]
    fn socket_buffers_are_counted_with_the_charge_tracepoint_on_cgroup_v2_only() {
        let v2 = KernelFacts {
            memcg_v2: true,
            ..tracepoints_only()
        };
        let p = plan(&v2, None).unwrap();
        let sock = hook(&p, SOCK_HOOK);
        assert_eq!(
            (sock.tier, sock.programs.clone()),
            (Tier::Tracepoint, vec!["memcg_state"])
        );
        // v1: the tracepoint never sees socket buffers.
        let p = plan(&tracepoints_only(), None).unwrap();
        let sock = hook(&p, SOCK_HOOK);
        assert!(
            sock.tier.is_off() && sock.reason.contains("cgroup v1"),
            "{sock:?}"
        );
        // A kernel-function charge tier counts them as kernel memory already.
        let kprobes = KernelFacts {
            kprobe: Ok(()),
            symbols: debian_6_1().symbols,
            ..v2.clone()
        };
        let p = plan(&kprobes, Some(Tier::Kprobe)).unwrap();
        let sock = hook(&p, SOCK_HOOK);
        assert!(sock.tier.is_off() && sock.attach.is_empty(), "{sock:?}");
        assert!(sock.reason.contains("kernel function"), "{sock:?}");
        // An unusual record layout: off, said.
        let odd = KernelFacts {
            memcg_state_val_long: None,
            ..v2
        };
        let sock = hook(&plan(&odd, None).unwrap(), SOCK_HOOK).clone();
        assert!(sock.reason.contains("unexpected layout"), "{sock:?}");
    }

    #[test]
    fn tiers_fall_back_to_tracepoints_and_say_why_when_fentry_and_kprobes_are_refused() {
        let p = plan(&tracepoints_only(), None).expect("plan");
        let charge = hook(&p, "charge");
        assert_eq!(charge.tier, Tier::Tracepoint);
        assert!(
            charge.reason.contains("fentry: refused (EPERM)"),
            "{}",
            charge.reason
        );
        assert!(
            charge.reason.contains("kprobe: refused"),
            "{}",
            charge.reason
        );
        let oom = hook(&p, "oom");
        assert_eq!(oom.tier, Tier::Off);
        assert!(oom.reason.contains("mark_victim"), "{}", oom.reason);
        assert_eq!(hook(&p, "guest-fault").tier, Tier::Tracepoint);
        assert_eq!(
            hook(&p, "guest-fault").attach.len(),
            2,
            "kvm_entry and kvm_page_fault"
        );
    }

    #[test]
    fn raw_tracepoints_serve_where_their_prototype_matches_and_classic_ones_otherwise() {
        let p = plan(&tracepoints_only(), None).expect("plan");
        // The charge program with typed arguments; refused, the untyped raw one.
        let charge = hook(&p, "charge");
        assert_eq!(charge.programs, ["memcg_lruvec_state_btf"]);
        assert!(matches!(charge.attach[0], Attach::BtfTracepoint { .. }));
        assert_eq!(
            charge.fallback,
            [Attach::RawTracepoint {
                program: "memcg_lruvec_state_raw",
                name: "mod_memcg_lruvec_state"
            }]
        );
        assert_eq!(hook(&p, GUEST_RAM_HOOK).programs, ["guest_ram_fault_raw"]);
        assert_eq!(hook(&p, "oom-victim").programs, ["oom_mark_victim_raw"]);
        // Untyped ones asked for: the raw program, the classic one if refused.
        let mut untyped = tracepoints_only();
        untyped.untyped_raw_only = true;
        let p = plan(&untyped, None).expect("plan");
        let charge = hook(&p, "charge");
        assert_eq!(charge.programs, ["memcg_lruvec_state_raw"]);
        assert_eq!(charge.fallback.len(), 1);
        assert_eq!(charge.fallback[0].program(), "memcg_lruvec_state");
        // The raw charge program reads the memcg id through BTF offsets.
        let mut no_path = tracepoints_only();
        no_path.memcg_id_path = false;
        let p = plan(&no_path, None).expect("plan");
        assert_eq!(hook(&p, "charge").programs, ["memcg_lruvec_state"]);
        assert_eq!(hook(&p, GUEST_RAM_HOOK).programs, ["guest_ram_fault_raw"]);
        // A prototype that is not the one the program reads: the classic program, but raw ones
        // that read no argument serve anyway.
        let mut unknown = tracepoints_only();
        unknown.raw_tracepoints.clear();
        unknown.lruvec_fixed_layout = false;
        let p = plan(&unknown, None).expect("plan");
        assert_eq!(hook(&p, "charge").programs, ["memcg_lruvec_state_any"]);
        assert_eq!(hook(&p, GUEST_RAM_HOOK).programs, ["guest_ram_fault"]);
        assert_eq!(hook(&p, "thread-exit").programs, ["sched_exit"]);
        assert_eq!(
            hook(&p, "reclaim-begin").programs,
            ["memcg_reclaim_begin_raw"]
        );
        assert_eq!(
            hook(&p, "guest-fault").programs,
            ["kvm_entry_raw", "kvm_page_fault_raw"]
        );
        // Classic ones asked for: every hook.
        let mut classic = tracepoints_only();
        classic.classic_only = true;
        let p = plan(&classic, None).expect("plan");
        for c in &p {
            for a in &c.attach {
                assert!(
                    !matches!(
                        a,
                        Attach::RawTracepoint { .. } | Attach::BtfTracepoint { .. }
                    ),
                    "{}",
                    c.hook
                );
            }
        }
        assert_eq!(
            hook(&p, "guest-fault").programs,
            ["kvm_entry", "kvm_page_fault"]
        );
    }

    #[test]
    fn every_frequent_tracepoint_hook_is_raw_where_its_prototype_matches() {
        // mark_victim too, where BTF gives its (task, uid) prototype and the victim's memory:
        // a skipped classic run lost a whole kill.
        let p = plan(&tracepoints_only(), None).expect("plan");
        for (h, programs) in [
            ("thread-exit", &["sched_exit_raw"][..]),
            ("exec", &["sched_exec_raw"]),
            ("reclaim-begin", &["memcg_reclaim_begin_raw"]),
            ("reclaim-end", &["memcg_reclaim_end_raw"]),
            ("guest-fault", &["kvm_entry_raw", "kvm_page_fault_raw"]),
            ("oom-victim", &["oom_mark_victim_raw"]),
            ("kill-signal", &["kill_signal_raw"]),
        ] {
            assert_eq!(hook(&p, h).programs, programs, "{h}");
        }
        // Should the kernel refuse a raw program, its classic one is ready in its place.
        assert_eq!(
            hook(&p, "oom-victim")
                .fallback
                .iter()
                .map(Attach::program)
                .collect::<Vec<_>>(),
            ["oom_mark_victim"]
        );
        // Without the prototype (older kernels: mark_victim(int pid)), the classic record.
        let mut old = tracepoints_only();
        old.raw_tracepoints.remove("mark_victim");
        let p = plan(&old, None).expect("plan");
        assert_eq!(hook(&p, "oom-victim").programs, ["oom_mark_victim"]);
    }

    #[test]
    fn tiers_prefer_fentry_but_kprobes_for_charges_and_module_functions() {
        let p = plan(&debian_6_1(), None).expect("plan");
        let charge = hook(&p, "charge");
        assert_eq!(
            (charge.tier.name(), charge.target.as_str()),
            ("kprobe", "try_charge_memcg")
        );
        assert_eq!(
            charge.programs,
            ["folio_charge_kprobe", "uncharge_kprobe", "charge_kprobe"]
        );
        let mut no_kprobes = debian_6_1();
        no_kprobes.kprobe = Err("off".into());
        let p2 = plan(&no_kprobes, None).expect("plan");
        assert_eq!(
            hook(&p2, "charge").programs,
            ["folio_charge_fentry", "uncharge_fentry", "charge_fentry"]
        );
        let oom = hook(&p, "oom");
        assert_eq!(oom.tier, Tier::Fentry);
        assert_eq!(
            oom.programs,
            ["oom_end_fexit", "oom_start_fentry"],
            "exit attached first"
        );
        let guest = hook(&p, "guest-fault");
        assert_eq!(
            guest.tier,
            Tier::Kprobe,
            "kvm_mmu_page_fault is not in vmlinux BTF"
        );
        assert!(
            guest
                .reason
                .contains("fentry: kvm_mmu_page_fault is not in vmlinux BTF")
        );
        assert_eq!(
            guest.programs,
            ["guest_fault_kretprobe", "guest_fault_kprobe"]
        );
    }

    #[test]
    fn tiers_charge_prefers_the_memcg_tracepoint_then_kprobe_and_says_when_frees_are_unseen() {
        let mut k = debian_6_1();
        k.tracepoints.insert("memcg:mod_memcg_lruvec_state".into());
        let p = plan(&k, None).expect("plan");
        assert_eq!(hook(&p, "charge").tier, Tier::Tracepoint);
        assert_eq!(
            hook(&p, "oom").tier,
            Tier::Fentry,
            "other hooks keep fentry first"
        );
        k.uncharge_gather = false;
        let p = plan(&k, Some(Tier::Kprobe)).expect("plan");
        let charge = hook(&p, "charge");
        assert_eq!(charge.programs, ["folio_charge_kprobe", "charge_kprobe"]);
        assert!(
            charge.reason.contains("frees are not seen"),
            "{}",
            charge.reason
        );
    }

    #[test]
    fn tiers_forced_kprobe_applies_to_function_hooks_and_keeps_tracepoint_only_hooks() {
        let p = plan(&debian_6_1(), Some(Tier::Kprobe)).expect("plan");
        assert_eq!(hook(&p, "charge").tier, Tier::Kprobe);
        assert_eq!(
            hook(&p, "oom").programs,
            ["oom_end_kretprobe", "oom_start_kprobe"]
        );
        assert_eq!(hook(&p, "oom-victim").tier, Tier::Tracepoint);
        assert!(hook(&p, "charge").reason.ends_with("[forced]"));
    }

    #[test]
    fn tiers_forced_but_unavailable_name_the_hook_and_the_reason() {
        let e = plan(&debian_6_1(), Some(Tier::Tracepoint)).expect_err("no memcg tracepoint");
        assert!(
            e.contains("hook charge") && e.contains("memcg:mod_memcg_lruvec_state"),
            "{e}"
        );
        let e = plan(&tracepoints_only(), Some(Tier::Fentry)).expect_err("fentry refused");
        assert!(e.contains("hook charge") && e.contains("EPERM"), "{e}");
        // Function-only hooks are off under a forced tracepoint tier, and say so.
        let p = plan(&tracepoints_only(), Some(Tier::Tracepoint)).expect("plan");
        assert!(hook(&p, "oom").reason.contains("tracepoint tier forced"));
    }

    #[test]
    fn tiers_kprobe_targets_a_compiler_clone_and_fentry_needs_the_memcg_id_path() {
        let mut k = debian_6_1();
        k.symbols.insert(
            "try_charge_memcg".into(),
            "try_charge_memcg.constprop.0".into(),
        );
        let p = plan(&k, Some(Tier::Kprobe)).expect("plan");
        assert!(matches!(
            hook(&p, "charge").attach.last(),
            Some(Attach::KProbe { function, .. }) if function == "try_charge_memcg.constprop.0"
        ));
        k.memcg_id_path = false;
        let p = plan(&k, None).expect("plan");
        assert_eq!(hook(&p, "charge").tier, Tier::Off);
        assert!(
            plan(&k, None).is_ok(),
            "auto never errs; load refuses a required hook off"
        );
    }
}
