//! Views computed from the model's state: per memcg (limit, headroom, growth rate, time to the
//! limit, bytes per class, KubeVirt budget), per process and per thread with their growth over
//! the last 10 s and 60 s, and the OOM post-mortem. Pure functions of the state; no I/O.
use serde::Serialize;

use crate::{
    kubevirt::{ThreadClass, budget, identity::PodIdentity},
    units::bytes,
};

pub const WINDOW_SHORT_NS: u64 = 10_000_000_000;
pub const WINDOW_LONG_NS: u64 = 60_000_000_000;

/// Bytes per class, indexed by `ThreadClass::ALL` order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassVec {
    pub total: [i64; ThreadClass::ALL.len()],
    pub guest: [i64; ThreadClass::ALL.len()],
    /// Of `total`: page cache the class's threads charged, shmem left out where the charge hook
    /// tells it (reclaim can drop page cache once clean, never shmem).
    pub file: [i64; ThreadClass::ALL.len()],
}

impl ClassVec {
    pub fn add(&mut self, class: ThreadClass, total: i64, guest: i64, file: i64) {
        let i = class.index();
        self.total[i] += total;
        self.guest[i] += guest;
        self.file[i] += file;
    }

    pub fn add_all(&mut self, other: &ClassVec) {
        for i in 0..self.total.len() {
            self.total[i] += other.total[i];
            self.guest[i] += other.guest[i];
            self.file[i] += other.file[i];
        }
    }

    pub fn max_with(&mut self, other: &ClassVec) {
        for i in 0..self.total.len() {
            self.total[i] = self.total[i].max(other.total[i]);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.total.iter().all(|v| *v == 0)
    }
}

/// Bytes per class by kind, at the latest tick only (the growth windows need the totals alone,
/// so the history keeps `ClassVec`). Indexed by `ThreadClass::ALL` order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassKinds {
    pub anon: [i64; ThreadClass::ALL.len()],
    /// Page cache but shmem (all of it where the charge hook does not tell shmem apart).
    pub page_cache: [i64; ThreadClass::ALL.len()],
    pub shmem: [i64; ThreadClass::ALL.len()],
    pub sock: [i64; ThreadClass::ALL.len()],
    pub kernel: [i64; ThreadClass::ALL.len()],
}

impl ClassKinds {
    pub fn add(&mut self, class: ThreadClass, t: &oomtrace_common::ChargeTotals) {
        let i = class.index();
        self.anon[i] += t.anon;
        self.page_cache[i] += t.file - t.shmem;
        self.shmem[i] += t.shmem;
        self.sock[i] += t.sock;
        self.kernel[i] += t.kernel;
    }

    pub fn add_all(&mut self, other: &ClassKinds) {
        for i in 0..self.anon.len() {
            self.anon[i] += other.anon[i];
            self.page_cache[i] += other.page_cache[i];
            self.shmem[i] += other.shmem[i];
            self.sock[i] += other.sock[i];
            self.kernel[i] += other.kernel[i];
        }
    }
}

/// Which kinds the charges so far could tell: a figure the hook could not measure is null,
/// never a zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindsTold {
    pub shmem: bool,
    pub sock: bool,
}

impl KindsTold {
    pub fn shmem(self, bytes: i64) -> Option<i64> {
        self.shmem.then_some(bytes)
    }

    pub fn sock(self, bytes: i64) -> Option<i64> {
        self.sock.then_some(bytes)
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassView {
    pub class: ThreadClass,
    /// Net bytes charged since oomtrace started.
    pub now: i64,
    pub peak: i64,
    /// Of `now`: guest RAM (vCPU charges inside guest faults, or TCG vCPU anon).
    pub guest: i64,
    /// Of `now`, by kind, as the class's threads charged it: anonymous memory (guest RAM is
    /// part of it), page cache but shmem, shmem, socket buffers (null where the hook cannot
    /// tell shmem or does not count sockets), kernel memory. Charges since oomtrace started,
    /// like `now`: memory a process held before is in the budget's `observed`, not here.
    pub anon: i64,
    pub page_cache: i64,
    pub shmem: Option<i64>,
    pub sock: Option<i64>,
    pub kernel: i64,
    pub last_10s: i64,
    pub last_60s: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BudgetView {
    pub item: &'static str,
    pub reserved: u64,
    /// Overhead the item's classes hold: their memory at start (from /proc, when they were
    /// already running) plus what they charged since, minus guest RAM.
    pub observed: i64,
    /// Of `observed`: clean page cache the kernel could reclaim (the item's page cache times
    /// the memcg's clean share of its page cache, from memory.stat). Not counted against the
    /// reservation.
    pub reclaimable: i64,
    /// `observed - reclaimable` exceeds `reserved`.
    pub over: bool,
}

/// The kernel's pressure counters of a memcg, and how they moved in the last 60 s (or since
/// oomtrace first read them).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PressureView {
    /// Charges that hit the limit (v1 memory.failcnt: each failed attempt, before reclaim; v2
    /// memory.events `max`), in total and in the window.
    pub limit_hits: u64,
    pub limit_hits_60s: u64,
    /// OOM kills the kernel counted in this memcg (null where it does not count them).
    pub oom_kills: Option<u64>,
    /// Share of the window during which some task / all tasks of the memcg stalled on memory
    /// (PSI, cgroup v2; null on v1, which has none).
    pub stalled_some_60s: Option<f64>,
    pub stalled_full_60s: Option<f64>,
    /// Seconds the window covers (60, or less when first read later).
    pub window_s: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MemcgView {
    pub memcg: String,
    pub memcg_id: u64,
    pub pod: Option<PodIdentity>,
    /// "namespace/name" of the pod, from the container runtime's state on the node.
    pub pod_name: Option<String>,
    /// The container's name when this memcg is a container's (or inside one), from the runtime.
    pub container_name: Option<String>,
    /// "namespace/name" of the VM whose qemu charges here.
    pub vm: Option<String>,
    pub usage: Option<u64>,
    pub limit: Option<u64>,
    pub headroom: Option<i64>,
    /// The kernel's pressure counters (null when they were not read).
    pub pressure: Option<PressureView>,
    /// What kind of memory the memcg holds, from its memory.stat (null when not read).
    pub kinds: Option<super::kinds::KindsView>,
    /// Usage growth in bytes per second over the last 10 s and 60 s.
    pub rate_10s: Option<f64>,
    pub rate_60s: Option<f64>,
    /// Seconds until usage reaches the limit at the 10 s rate (None: not growing or no limit).
    pub time_to_limit_s: Option<f64>,
    pub classes: Vec<ClassView>,
    pub guest: i64,
    pub overhead: i64,
    pub budget: Vec<BudgetView>,
    pub budget_profile: Option<&'static str>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ProcessView {
    pub pid: u32,
    pub process: String,
    pub class: ThreadClass,
    pub now: i64,
    pub peak: i64,
    /// Of `now`: anonymous memory (what the kernel's rss_anon counts), and guest RAM.
    pub anon: i64,
    pub guest: i64,
    /// Of `now`, the other kinds (as in `ClassView`).
    pub page_cache: i64,
    pub shmem: Option<i64>,
    pub sock: Option<i64>,
    pub kernel: i64,
    pub last_10s: i64,
    pub last_60s: i64,
    /// Growth without guest RAM.
    pub overhead_10s: i64,
    pub overhead_60s: i64,
    /// A qemu whose guest RAM mappings the kernel programs know: its guest RAM is measured by
    /// address, not estimated.
    pub guest_ram_mapped: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ThreadView {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub process: String,
    pub class: ThreadClass,
    pub memcg: String,
    /// The container whose memcg this is, when the runtime told its name.
    pub container: Option<String>,
    pub now: i64,
    pub peak: i64,
    /// Of `now`, by kind (as in `ClassView`).
    pub anon: i64,
    pub guest: i64,
    pub page_cache: i64,
    pub shmem: Option<i64>,
    pub sock: Option<i64>,
    pub kernel: i64,
    pub last_10s: i64,
    pub last_60s: i64,
    pub overhead_10s: i64,
    pub overhead_60s: i64,
}

/// Periodic `tail --by` output: the state of every charged memcg and its biggest movers.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Snapshot {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ts_ns: u64,
    pub memcgs: Vec<MemcgView>,
    pub processes: Vec<ProcessView>,
    pub threads: Vec<ThreadView>,
}

/// What grew before an OOM kill, in the memcg whose limit was hit.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PostMortem {
    /// One plain sentence first.
    pub sentence: String,
    pub memcg: MemcgView,
    pub processes: Vec<ProcessView>,
    /// The five threads that grew most in the last 60 s (then by bytes held).
    pub top: Vec<ThreadView>,
    /// Guest RAM oomtrace saw the victim's vCPUs fault in (plus its RAM at start when known).
    pub victim_guest: i64,
}

/// Rows below this many bytes in every column are left out of process and thread views (a few
/// slab objects, a kernel stack): they would bury the rows that matter.
pub const NOISE_BYTES: i64 = 64 * 1024;

pub fn is_noise(values: &[i64]) -> bool {
    values.iter().all(|v| v.abs() < NOISE_BYTES)
}

pub fn class_views(
    now: &ClassVec,
    kinds: &ClassKinds,
    told: KindsTold,
    peak: &ClassVec,
    ago10: &ClassVec,
    ago60: &ClassVec,
) -> Vec<ClassView> {
    let mut v: Vec<ClassView> = ThreadClass::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| now.total[*i] != 0 || peak.total[*i] != 0)
        .map(|(i, c)| ClassView {
            class: *c,
            now: now.total[i],
            peak: peak.total[i].max(now.total[i]),
            guest: now.guest[i],
            anon: kinds.anon[i],
            page_cache: kinds.page_cache[i],
            shmem: told.shmem(kinds.shmem[i]),
            sock: told.sock(kinds.sock[i]),
            kernel: kinds.kernel[i],
            last_10s: now.total[i] - ago10.total[i],
            last_60s: now.total[i] - ago60.total[i],
        })
        .collect();
    v.sort_by_key(|c| std::cmp::Reverse(c.now));
    v
}

/// Budget lines: observed overhead per KubeVirt item against what KubeVirt reserves.
/// `clean_share`: the part of the memcg's page cache that is clean (kinds::clean_share).
pub fn budget_views(b: &budget::Budget, held: &ClassVec, clean_share: f64) -> Vec<BudgetView> {
    b.items
        .iter()
        .map(|item| {
            let (observed, file) = item.classes.iter().fold((0, 0), |(o, f), c| {
                let i = c.index();
                (o + held.total[i] - held.guest[i], f + held.file[i].max(0))
            });
            let reclaimable = ((file as f64 * clean_share) as i64).clamp(0, observed.max(0));
            let unreclaimable = observed - reclaimable;
            BudgetView {
                item: item.name,
                reserved: item.reserved,
                observed,
                reclaimable,
                over: unreclaimable - i64::try_from(item.reserved).unwrap_or(i64::MAX)
                    >= NOISE_BYTES,
            }
        })
        .collect()
}

/// "memhold (foreign process in pod default/vm1) grew 250 MiB in the last 10 s and pushed the
/// pod over its 700 MiB limit; qemu-system-x86 (guest RAM 612 MiB) was killed."
pub fn sentence(
    memcg: &MemcgView,
    grower: Option<&ProcessView>,
    grew_in: &str,
    invoker: (&str, ThreadClass, u32),
    victim: (&str, ThreadClass, i64, i64),
) -> String {
    let place = match (&memcg.pod, &memcg.vm) {
        (_, Some(vm)) => format!("in the pod of VM {vm}"),
        (Some(p), None) => format!("in {}", crate::kubevirt::identity::describe(p)),
        _ => format!("in memcg {}", memcg.memcg),
    };
    let scope = match memcg.pod.as_ref().map(|p| p.level) {
        Some(crate::kubevirt::identity::Level::Pod) => "the pod".to_string(),
        Some(crate::kubevirt::identity::Level::Container) => "the container".to_string(),
        _ => "the memcg".to_string(),
    };
    let limit = memcg.limit.map_or("its limit".to_string(), |l| {
        format!("its {} limit", bytes(l as i64))
    });
    let (inv_comm, inv_class, inv_pid) = invoker;
    let mut s = match grower {
        Some(g) if g.last_60s > 0 => {
            let amount = if grew_in == "10 s" {
                g.last_10s
            } else {
                g.last_60s
            };
            let besides = if g.class.is_qemu() {
                " besides guest RAM"
            } else {
                ""
            };
            format!(
                "{} ({} {place}) grew {}{besides} in the last {grew_in} and pushed {scope} over {limit}",
                g.process,
                g.class.as_process(),
                bytes(amount)
            )
        }
        _ => format!("{inv_comm} ({inv_class}) hit {limit} {place}"),
    };
    if grower.is_some_and(|g| g.pid != inv_pid && g.overhead_60s > 0) {
        s.push_str(&format!(
            "; the charge that hit it came from {inv_comm} ({inv_class})"
        ));
    }
    let (v_comm, v_class, v_rss, v_guest) = victim;
    let pressure = memcg.pressure.as_ref().and_then(|p| {
        let window = format!("{:.0} s", p.window_s);
        match p.stalled_some_60s {
            Some(some) if some >= 0.005 => Some(format!(
                " Before the kill {scope} spent {:.0}% of the last {window} stalled on memory.",
                some * 100.0
            )),
            _ if p.limit_hits_60s > 0 => Some(format!(
                " Before the kill {scope} hit its limit {} times in the last {window}.",
                p.limit_hits_60s
            )),
            _ => None,
        }
    });
    if v_class.is_qemu() && v_guest > 0 {
        s.push_str(&format!(
            "; {v_comm} (guest RAM {}) was killed.",
            bytes(v_guest)
        ));
    } else {
        s.push_str(&format!(
            "; {v_comm} ({}, rss {}) was killed.",
            v_class.as_process(),
            bytes(v_rss)
        ));
    }
    if let Some(p) = pressure {
        s.push_str(&p);
    }
    if let Some(k) = &memcg.kinds {
        s.push_str(&super::kinds::sentence(k, &scope));
    }
    s
}

/// The memcgs a node view shows one row each for: pod-level memcgs where there are pods (their
/// containers and QoS slices roll up into them or hold many), else the limited memcgs that no
/// other limited one contains, else every charged memcg.
pub fn pod_rows(memcgs: &[MemcgView]) -> Vec<&MemcgView> {
    use crate::kubevirt::identity::Level;
    let pods: Vec<&MemcgView> = memcgs
        .iter()
        .filter(|m| m.pod.as_ref().is_some_and(|p| p.level == Level::Pod))
        .collect();
    if !pods.is_empty() {
        return pods;
    }
    let limited: Vec<&MemcgView> = memcgs.iter().filter(|m| m.limit.is_some()).collect();
    let outermost: Vec<&MemcgView> = limited
        .iter()
        .filter(|m| {
            !limited
                .iter()
                .any(|o| o.memcg != m.memcg && super::is_ancestor(&o.memcg, &m.memcg))
        })
        .copied()
        .collect();
    if outermost.is_empty() {
        memcgs.iter().collect()
    } else {
        outermost
    }
}
