//! Attribution state, fed only by decoded events, ticks and facts the collector reads (memcg
//! paths, usage/limit, process names and command lines). Live and replay run this same code; it
//! does no I/O.
mod build_views;
mod history;
pub mod input;
pub mod kinds;
mod oom;
mod rows;
#[cfg(test)]
mod tests;
pub mod views;

use std::collections::BTreeMap;

// Small integer keys, our own data: a fast non-keyed hash (a replay is mostly map lookups).
use rustc_hash::FxHashMap as HashMap;

pub use rows::*;
use views::{ClassKinds, ClassVec};

use self::history::Series;
use crate::{
    cgroupfs::UsageLimit,
    decode::{
        Charge, ChargeTotals, Event, Exec, KillSignal, OomAttempt, OomKill, Reclaim, ThreadExit,
    },
    kubevirt::{
        ThreadClass, ThreadNames, budget,
        class::is_tcg_vcpu,
        classify,
        cmdline::VmFacts,
        identity::{self, PodIdentity},
    },
};

/// Processes remembered after all their threads are gone, for the summary (bounded).
const MAX_RETIRED_PROCESSES: usize = 4096;

/// What /proc says about a process, read once by the collector when the process is first seen.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProcessInfo {
    pub comm: String,
    pub exe: Option<String>,
    pub kernel_thread: Option<bool>,
    pub vm: VmFacts,
    /// Anonymous and other resident bytes at oomtrace's start, for processes already running
    /// then (their earlier charges are not in the trace).
    pub rss_at_start: Option<(u64, u64)>,
    /// Its memory cgroup, as the kernel prints paths.
    pub memcg: Option<String>,
    /// Its guest RAM mappings are known to the kernel programs: faults inside them are tagged.
    pub guest_ram_watched: bool,
}

#[derive(Clone, Debug, Default)]
struct ThreadState {
    tgid: u32,
    comm: String,
    class: Option<ThreadClass>,
    totals: ChargeTotals,
    peak: i64,
    exited: bool,
    /// A TCG vCPU of a qemu whose guest RAM mappings are not known: all its anon counts as guest.
    tcg_guess: bool,
    /// Guest RAM this thread faulted in before oomtrace knew the mapping (its share of what was
    /// resident there at discovery): moved from overhead to guest in one step.
    guest_found: i64,
    /// When its totals last changed: the newest of a thread's (tid, memcg) pairs says where
    /// it charges now.
    last_ts: u64,
    /// (total, guest) at past ticks.
    history: Series<(i64, i64)>,
}

impl ThreadState {
    fn class(&self) -> ThreadClass {
        self.class.unwrap_or(ThreadClass::Foreign)
    }

    /// What guest RAM can be made of: anonymous memory, and shmem (a memfd-backed guest's).
    fn guest_capable(&self) -> i64 {
        self.totals.anon.max(0) + self.totals.shmem.max(0)
    }

    /// Guest RAM among this thread's charges: charges inside KVM guest faults or inside the
    /// guest RAM mapping; for a TCG vCPU whose mapping is unknown, all its anonymous (and
    /// shmem) charges.
    fn guest(&self) -> i64 {
        let capable = self.guest_capable();
        if self.tcg_guess {
            capable
        } else {
            (self.totals.guest + self.guest_found).clamp(0, capable)
        }
    }

    /// Anonymous (and shmem) bytes not (yet) counted as guest RAM.
    fn untagged_anon(&self) -> i64 {
        self.guest_capable() - (self.totals.guest + self.guest_found).max(0)
    }

    fn set_class(&mut self, info: &ProcessInfo) {
        let class = classify_thread(&self.comm, info);
        self.class = Some(class);
        self.tcg_guess =
            class == ThreadClass::Vcpu && is_tcg_vcpu(&self.comm) && !info.guest_ram_watched;
    }
}

#[derive(Clone, Debug, Default)]
struct ProcessState {
    info: Option<ProcessInfo>,
    /// Totals of this process's threads that were already forgotten.
    retired: ChargeTotals,
    /// The same per memcg and class (total, guest, page cache but shmem): an exited thread's
    /// pages stay with the process until the process ends, so they stay in the class views
    /// until then.
    retired_by: HashMap<(u64, ThreadClass), (ChargeTotals, i64)>,
    /// Guest RAM among the retired totals (as each thread counted it when it was forgotten).
    retired_guest: i64,
    /// Its last thread exited: the retired buckets go with its last forgotten thread.
    dead: bool,
    live_threads: usize,
    last_ts: u64,
    /// Running net total of all its threads, and the highest it reached.
    total: i64,
    peak: i64,
    /// Guest RAM found resident in its mapping at discovery (net of what was tagged), and the
    /// part not yet handed to a thread.
    guest_found: i64,
    guest_found_left: i64,
}

#[derive(Clone, Debug, Default)]
struct MemcgState {
    path: String,
    usage: Option<UsageLimit>,
    identity: Option<PodIdentity>,
    usage_history: Series<u64>,
    pressure: Option<crate::cgroupfs::Pressure>,
    pressure_history: Series<crate::cgroupfs::Pressure>,
    stat: Option<crate::memory_stat::MemoryStat>,
    stat_history: Series<crate::memory_stat::MemoryStat>,
    /// This memcg and everything below it, per class, at each tick.
    classes: Series<ClassVec>,
    class_peak: ClassVec,
    /// The same by kind, at the latest tick.
    class_kinds: ClassKinds,
    /// Page cache that processes which ended left charged here, per the class that wrote it:
    /// page cache outlives its writer (a `dd` that exited), so it stays in the class views until
    /// an uncharge (reclaim, truncation) is counted against whichever thread does it.
    left_behind: BTreeMap<ThreadClass, i64>,
    /// Removed from the cgroup filesystem (its pod is gone).
    gone: bool,
}

#[derive(Debug)]
pub struct Model {
    threads: HashMap<(u32, u64), ThreadState>,
    /// tid → the memcgs it charged: exits and retirement find a thread's keys without a scan.
    memcgs_of_thread: HashMap<u32, Vec<u64>>,
    processes: HashMap<u32, ProcessState>,
    memcgs: HashMap<u64, MemcgState>,
    ooms: Vec<OomRow>,
    last_tick_ns: u64,
    /// Apply charges without building their rows (a replay that shows none of them).
    quiet_charges: bool,
    /// A charge came from a program that does not tell shmem apart (a kernel-function tier, a
    /// capture from before): no view shows a shmem figure, since its zero is not a measurement.
    charges_without_shmem: bool,
    /// A charge came from programs that do not count socket buffers (cgroup v1, a function
    /// tier, an older capture): no view shows a sock figure.
    charges_without_sock: bool,
    budget_constants: budget::Constants,
    budget_ratio: f64,
    /// Pod UID → (namespace, name), from the runtime's state.
    pod_names: HashMap<String, (String, String)>,
    /// Container id → name, from the runtime's state.
    container_names: HashMap<String, String>,
    pub counters: Counters,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            threads: HashMap::default(),
            memcgs_of_thread: HashMap::default(),
            processes: HashMap::default(),
            memcgs: HashMap::default(),
            ooms: Vec::new(),
            last_tick_ns: 0,
            quiet_charges: false,
            charges_without_shmem: false,
            charges_without_sock: false,
            budget_constants: budget::KUBEVIRT_CURRENT,
            budget_ratio: 1.0,
            pod_names: HashMap::default(),
            container_names: HashMap::default(),
            counters: Counters::default(),
        }
    }
}

/// What a process that ended still had charged as page cache, per memcg, under the class of its
/// threads that charged the most of it: per memcg, its net bytes (its exit freed its anonymous
/// memory) but never more than the page cache it charged there (a tier that does not see frees
/// must not keep a dead process's anonymous memory alive).
fn page_cache_left(
    retired_by: &HashMap<(u64, ThreadClass), (ChargeTotals, i64)>,
) -> Vec<(u64, ThreadClass, i64)> {
    // memcg → (net, page cache, (class, its page cache) that charged the most).
    let mut per_memcg: BTreeMap<u64, (i64, i64, (ThreadClass, i64))> = BTreeMap::new();
    for ((memcg, class), (totals, _)) in retired_by {
        let (total, file) = (totals.total(), totals.file - totals.shmem);
        let e = per_memcg
            .entry(*memcg)
            .or_insert((0, 0, (*class, i64::MIN)));
        e.0 += total;
        e.1 += file;
        if (file, std::cmp::Reverse(*class)) > (e.2.1, std::cmp::Reverse(e.2.0)) {
            e.2 = (*class, file);
        }
    }
    per_memcg
        .into_iter()
        .filter_map(|(memcg, (net, file, (class, _)))| {
            let left = net.min(file);
            (left > 0).then_some((memcg, class, left))
        })
        .collect()
}

fn add(a: &mut ChargeTotals, b: &ChargeTotals) {
    a.anon += b.anon;
    a.file += b.file;
    a.kernel += b.kernel;
    a.guest += b.guest;
    a.shmem += b.shmem;
    a.sock += b.sock;
}

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    /// The shmem part of `totals`, where every charge so far told it apart.
    pub(super) fn shmem(&self, totals: &ChargeTotals) -> Option<i64> {
        self.kinds_told().shmem(totals.shmem)
    }

    /// Which kinds every charge so far could tell.
    pub(super) fn kinds_told(&self) -> views::KindsTold {
        views::KindsTold {
            shmem: !self.charges_without_shmem,
            sock: !self.charges_without_sock,
        }
    }

    /// The socket buffers of `totals`, where every charge so far counted them.
    pub(super) fn sock(&self, totals: &ChargeTotals) -> Option<i64> {
        self.kinds_told().sock(totals.sock)
    }

    /// Charges still update every total, but return no row (nothing will show them).
    pub fn set_quiet_charges(&mut self, quiet: bool) {
        self.quiet_charges = quiet;
    }

    /// KubeVirt constants and additionalGuestMemoryOverheadRatio for the budget comparison.
    pub fn set_budget(&mut self, constants: budget::Constants, ratio: f64) {
        self.budget_constants = constants;
        self.budget_ratio = ratio;
    }

    pub fn set_memcg_path(&mut self, id: u64, path: String) {
        let m = self.memcgs.entry(id).or_default();
        m.identity = identity::parse(&path);
        m.path = path;
        m.gone = false;
    }

    /// Page cache left in a memcg by processes of `class` that ended (a capture's facts).
    pub fn set_left_behind(&mut self, id: u64, class: ThreadClass, bytes: i64) {
        self.memcgs
            .entry(id)
            .or_default()
            .left_behind
            .insert(class, bytes);
    }

    pub fn set_usage(&mut self, id: u64, usage: UsageLimit) {
        self.memcgs.entry(id).or_default().usage = Some(usage);
    }

    pub fn set_pressure(&mut self, id: u64, pressure: crate::cgroupfs::Pressure) {
        self.memcgs.entry(id).or_default().pressure = Some(pressure);
    }

    /// The memory.stat last fed for `id`: the collector feeds only readings that changed.
    pub fn memory_stat_of(&self, id: u64) -> Option<crate::memory_stat::MemoryStat> {
        self.memcgs.get(&id)?.stat
    }

    /// The pressure last fed for `id`: the collector feeds only readings that changed.
    pub fn pressure_of(&self, id: u64) -> Option<crate::cgroupfs::Pressure> {
        self.memcgs.get(&id)?.pressure
    }

    pub fn memcg_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.memcgs.keys().copied()
    }

    pub fn process_info(&self, tgid: u32) -> Option<&ProcessInfo> {
        self.processes.get(&tgid).and_then(|p| p.info.as_ref())
    }

    pub fn process_comm(&self, tgid: u32) -> Option<&str> {
        self.processes
            .get(&tgid)
            .and_then(|p| p.info.as_ref())
            .map(|i| i.comm.as_str())
    }

    /// (tid, tgid) of every task not yet forgotten: what the housekeeping looks for in /proc.
    /// Not the interrupt pseudo-thread, which is no task and never exits (looked for as
    /// /proc/0/task/0, it was forgotten after 30 s, and with it a receiver's socket buffers).
    pub fn live_threads(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.threads
            .iter()
            .filter(|((tid, _), t)| !t.exited && *tid != oomtrace_common::INTERRUPT_TID)
            .map(|((tid, _), t)| (*tid, t.tgid))
    }

    pub fn knows_memcg(&self, id: u64) -> bool {
        self.memcgs.contains_key(&id)
    }

    pub fn knows_process(&self, tgid: u32) -> bool {
        self.processes.get(&tgid).is_some_and(|p| p.info.is_some())
    }

    /// Only the name is known (tests, replay of old captures).
    pub fn set_process_comm(&mut self, tgid: u32, comm: String) {
        let p = self.processes.entry(tgid).or_default();
        match p.info.as_mut() {
            Some(i) => i.comm = comm,
            None => {
                p.info = Some(ProcessInfo {
                    comm,
                    ..Default::default()
                })
            }
        }
        self.reclassify(tgid);
    }

    /// A re-read keeps what a dying process no longer shows (its command line, executable).
    pub fn set_process_info(&mut self, tgid: u32, mut info: ProcessInfo) {
        let p = self.processes.entry(tgid).or_default();
        if let Some(old) = p.info.take() {
            if info.vm == VmFacts::default() {
                info.vm = old.vm;
            }
            info.exe = info.exe.or(old.exe);
            info.rss_at_start = info.rss_at_start.or(old.rss_at_start);
            info.memcg = info.memcg.or(old.memcg);
            info.guest_ram_watched |= old.guest_ram_watched;
            if info.comm.is_empty() {
                info.comm = old.comm;
            }
        }
        p.info = Some(info);
        self.reclassify(tgid);
    }

    fn reclassify(&mut self, tgid: u32) {
        let Some(info) = self.processes.get(&tgid).and_then(|p| p.info.clone()) else {
            return;
        };
        for t in self.threads.values_mut().filter(|t| t.tgid == tgid) {
            t.set_class(&info);
        }
    }

    /// (tid, memcg) pairs of live threads, for the collector's sweep of the kernel map.
    pub fn thread_keys(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.threads.keys().copied()
    }

    /// A known thread whose name is still its process's and whose totals moved: it may have
    /// been renamed after its first record (qemu names vCPU threads once they run), and no
    /// record since carried the new name.
    pub fn may_be_renamed(&self, c: &Charge) -> bool {
        c.tid != c.tgid
            && self.threads.get(&(c.tid, c.memcg_id)).is_some_and(|t| {
                t.totals != c.totals && Some(t.comm.as_str()) == self.process_comm(c.tgid)
            })
    }

    /// The model already holds exactly these totals for the pair (a sweep reading that would
    /// change nothing).
    pub fn has_totals(&self, tid: u32, memcg_id: u64, totals: &ChargeTotals) -> bool {
        self.threads
            .get(&(tid, memcg_id))
            .is_some_and(|t| t.totals == *totals && !t.comm.is_empty())
    }

    pub fn knows_thread(&self, tid: u32, memcg_id: u64) -> bool {
        self.threads.contains_key(&(tid, memcg_id))
    }

    pub fn keys_of_thread(&self, tid: u32) -> Vec<(u32, u64)> {
        self.memcgs_of_thread
            .get(&tid)
            .map(|ms| ms.iter().map(|m| (tid, *m)).collect())
            .unwrap_or_default()
    }

    fn memcg_path(&self, id: u64) -> String {
        match self.memcgs.get(&id) {
            Some(m) if !m.path.is_empty() => m.path.clone(),
            _ => format!("memcg#{id}"),
        }
    }

    /// The name of the container `id` is (or is inside), when the runtime told it.
    fn container_name(&self, id: u64) -> Option<String> {
        let cid = self
            .memcgs
            .get(&id)?
            .identity
            .as_ref()?
            .container_id
            .as_deref()?;
        self.container_names.get(cid).cloned()
    }

    fn process_name(&self, tgid: u32, fallback: &str) -> String {
        self.processes
            .get(&tgid)
            .and_then(|p| p.info.as_ref())
            .map(|i| i.comm.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| fallback.to_string())
    }

    /// The class of a thread named `comm` in process `tgid`.
    fn thread_class(&self, comm: &str, tgid: u32) -> ThreadClass {
        match self.processes.get(&tgid).and_then(|p| p.info.as_ref()) {
            Some(info) => classify_thread(comm, info),
            None => classify_thread(comm, &ProcessInfo::default()),
        }
    }

    /// A process's class: its main thread's, from its names.
    fn process_class(&self, tgid: u32) -> ThreadClass {
        match self.processes.get(&tgid).and_then(|p| p.info.as_ref()) {
            Some(info) => classify_thread(&info.comm, info),
            None => ThreadClass::Foreign,
        }
    }

    pub fn apply(&mut self, event: &Event) -> Option<Change> {
        self.counters.events += 1;
        match event {
            Event::Charge(c) => self.charge(c).map(Change::Charge),
            Event::ChargeBeforeKinds(c) => self.charge(&Charge::from(c)).map(Change::Charge),
            Event::OomVictim(v) => self.oom(&OomKill {
                victim: v.clone(),
                invoker_memcg_id: 0,
                oom_memcg_id: 0,
                group_memcg_id: 0,
                oom_start_ns: 0,
            }),
            Event::OomKillBeforeGroups(k) => self.oom(&OomKill::from(k)),
            Event::OomKill(k) => self.oom(k),
            Event::Exec(e) => Some(Change::Exec(self.exec(e))),
            Event::Reclaim(r) => Some(Change::Reclaim(self.reclaim(r))),
            Event::ThreadExit(e) => Some(Change::Exit(self.exit(e))),
            Event::OomAttempt(o) => Some(Change::OomAttempt(self.oom_attempt(o))),
            Event::KillSignal(k) => Some(Change::KillSignal(self.kill_signal(k))),
        }
    }

    /// The pod memcg `id` is (or is inside), by its path.
    fn pod_memcg_of(&self, id: u64) -> Option<u64> {
        use crate::kubevirt::identity::Level;
        let parents = self.parents();
        let mut at = Some(id);
        while let Some(m) = at {
            let level = self
                .memcgs
                .get(&m)
                .and_then(|s| s.identity.as_ref())
                .map(|i| i.level);
            if level == Some(Level::Pod) {
                return Some(m);
            }
            at = parents.get(&m).copied();
        }
        None
    }

    fn kill_signal(&self, k: &KillSignal) -> KillSignalRow {
        let tgid = match k.target_tgid {
            0 => self
                .latest_key_of(k.target_tid)
                .and_then(|key| self.threads.get(&key))
                .map_or(k.target_tid, |t| t.tgid),
            tgid => tgid,
        };
        let usage = self.memcgs.get(&k.target_memcg_id).and_then(|m| m.usage);
        KillSignalRow {
            pod_memcg_id: self.pod_memcg_of(k.target_memcg_id),
            ts_ns: k.ts_ns,
            signal: if k.sig == 9 { "SIGKILL" } else { "SIGTERM" },
            sender_pid: k.sender_tgid,
            sender_tid: k.sender_tid,
            sender_kind: crate::killer::kind(&k.sender_comm),
            sender_comm: k.sender_comm.clone(),
            pid: tgid,
            tid: k.target_tid,
            process: self.process_name(tgid, &k.target_comm),
            class: self.process_class(tgid),
            comm: k.target_comm.clone(),
            memcg: self.memcg_path(k.target_memcg_id),
            memcg_id: k.target_memcg_id,
            // The kernel's count at the signal where the program read it; else the last
            // reading (the collector reads it again when it sees the signal).
            usage: k.usage_bytes.or(usage.map(|u| u.usage)),
            limit: usage.and_then(|u| u.limit),
            result: match k.result {
                0 => "delivered",
                1 => "ignored",
                2 => "already pending",
                _ => "queue full",
            },
        }
    }

    /// A charge record or a sweep reading: both carry cumulative totals, so the delta is the
    /// difference to what we knew. Returns None when nothing changed.
    pub fn charge(&mut self, c: &Charge) -> Option<ChargeRow> {
        self.charges_without_shmem |= !c.shmem_counted;
        self.charges_without_sock |= !c.sock_counted;
        let key = (c.tid, c.memcg_id);
        if !self.threads.contains_key(&key) {
            let p = self.processes.entry(c.tgid).or_default();
            p.live_threads += 1;
            // Totals count from oomtrace's start: a thread's first record grew from zero.
            let mut t = ThreadState::default();
            t.history.record(c.ts_ns, (0, 0));
            self.threads.insert(key, t);
            self.memcgs_of_thread
                .entry(c.tid)
                .or_default()
                .push(c.memcg_id);
        }
        if c.tid == c.tgid {
            self.learn_leader_comm(c.tgid, &c.comm);
        }
        let t = self.threads.get(&key)?;
        let comm_changed = !c.comm.is_empty() && c.comm != t.comm;
        if comm_changed || t.class.is_none() {
            // Only then: cloning the process facts for every record would dominate a replay.
            let info = self
                .processes
                .get(&c.tgid)
                .and_then(|p| p.info.clone())
                .unwrap_or_default();
            if let Some(t) = self.threads.get_mut(&key) {
                if comm_changed {
                    t.comm = c.comm.clone();
                }
                t.set_class(&info);
            }
        }
        let t = self.threads.entry(key).or_default();
        let delta = c.totals.total() - t.totals.total();
        if delta == 0 && t.totals == c.totals && !t.comm.is_empty() && !comm_changed {
            return None;
        }
        t.tgid = c.tgid;
        t.totals = c.totals;
        t.peak = t.peak.max(c.totals.total());
        t.last_ts = t.last_ts.max(c.ts_ns).max(1);
        let (comm, totals, class) = (t.comm.clone(), t.totals, t.class());
        let mut guest_left = false;
        if let Some(p) = self.processes.get_mut(&c.tgid) {
            p.last_ts = p.last_ts.max(c.ts_ns);
            p.total += delta;
            p.peak = p.peak.max(p.total);
            guest_left = p.guest_found_left > 0;
        }
        if guest_left {
            // Guest RAM found at discovery that no thread held yet: charged after the reading
            // the discovery was weighed against, or, in a replay of a rotated capture, by
            // threads it has not met yet.
            self.hand_out_guest_found(c.tgid, key);
        }
        if self.quiet_charges {
            return None;
        }
        let usage = self.memcgs.get(&c.memcg_id).and_then(|m| m.usage);
        Some(ChargeRow {
            ts_ns: c.ts_ns,
            memcg: self.memcg_path(c.memcg_id),
            memcg_id: c.memcg_id,
            pid: c.tgid,
            tid: c.tid,
            process: self.process_name(c.tgid, &comm),
            comm,
            class,
            delta,
            total: totals.total(),
            anon: totals.anon,
            file: totals.file,
            shmem: self.shmem(&totals),
            sock: self.sock(&totals),
            kernel: totals.kernel,
            guest: totals.guest,
            usage: usage.map(|u| u.usage),
            limit: usage.and_then(|u| u.limit),
        })
    }

    /// The main thread's comm is the process comm; it changes at exec and prctl(PR_SET_NAME).
    fn learn_leader_comm(&mut self, tgid: u32, comm: &str) {
        if comm.is_empty() {
            return;
        }
        let p = self.processes.entry(tgid).or_default();
        match p.info.as_mut() {
            Some(i) if i.comm != comm => {
                i.comm = comm.to_string();
                self.reclassify(tgid);
            }
            Some(_) => {}
            None => {
                p.info = Some(ProcessInfo {
                    comm: comm.to_string(),
                    ..Default::default()
                })
            }
        }
    }

    /// Every (tid, memcg) pair of a thread takes the name the kernel gave it (at an exec, an
    /// OOM): the pairs in memcgs it charged before it moved are the same thread.
    fn rename_thread(&mut self, tid: u32, comm: &str) {
        if comm.is_empty() {
            return;
        }
        for key in self.keys_of_thread(tid) {
            let Some(t) = self.threads.get(&key) else {
                continue;
            };
            if t.comm == comm {
                continue;
            }
            let info = self
                .processes
                .get(&t.tgid)
                .and_then(|p| p.info.clone())
                .unwrap_or_default();
            if let Some(t) = self.threads.get_mut(&key) {
                t.comm = comm.to_string();
                t.set_class(&info);
            }
        }
    }

    /// The thread's newest pair: where it charged last (ties: the higher memcg id), so the
    /// answer never depends on map order.
    fn latest_key_of(&self, tid: u32) -> Option<(u32, u64)> {
        self.keys_of_thread(tid)
            .into_iter()
            .filter_map(|k| self.threads.get(&k).map(|t| ((t.last_ts, k.1), k)))
            .max()
            .map(|(_, k)| k)
    }

    /// A thread's name: the kernel's at the event when the event has one, else the newest
    /// its pairs know, else its process's.
    fn thread_comm(&self, tid: u32, tgid: u32, at_event: &str) -> String {
        if !at_event.is_empty() {
            return at_event.to_string();
        }
        self.latest_key_of(tid)
            .and_then(|k| self.threads.get(&k))
            .map(|t| t.comm.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| self.process_name(tgid, ""))
    }

    fn exec(&mut self, e: &Exec) -> ExecRow {
        let old_comm = self.thread_comm(e.old_tid, e.tgid, "");
        let memcg = (e.memcg_id != 0).then(|| self.memcg_path(e.memcg_id));
        // A new program: what was read of the old one (executable, command line, VM facts,
        // resident memory at start, guest RAM found) no longer holds. The collector reads the
        // new one's facts next.
        let p = self.processes.entry(e.tgid).or_default();
        p.info = Some(ProcessInfo {
            comm: e.comm.clone(),
            memcg: memcg.clone().filter(|m| m.starts_with('/')),
            ..Default::default()
        });
        p.guest_found = 0;
        p.guest_found_left = 0;
        for tid in [e.old_tid, e.tid] {
            for key in self.keys_of_thread(tid) {
                if let Some(t) = self.threads.get_mut(&key) {
                    t.guest_found = 0;
                }
            }
            self.rename_thread(tid, &e.comm);
        }
        self.reclassify(e.tgid);
        ExecRow {
            ts_ns: e.ts_ns,
            pid: e.tgid,
            tid: e.tid,
            comm: e.comm.clone(),
            old_comm,
            memcg: memcg.unwrap_or_default(),
            memcg_id: e.memcg_id,
        }
    }

    /// Of `untagged` bytes resident in a qemu's guest RAM mapping when oomtrace found it and
    /// not tagged as guest RAM by the kernel programs (faulted in before the fault hook knew the
    /// mapping), those charged since oomtrace started: what it held at the start is already
    /// counted (`baseline_guest`), and so is what forgotten threads were tagged with.
    pub fn guest_found_at_discovery(&self, tgid: u32, untagged: i64) -> i64 {
        let retired = self.processes.get(&tgid).map_or(0, |p| p.retired_guest);
        (untagged - self.baseline_guest(tgid) - retired).max(0)
    }

    /// Moves `bytes` of a qemu's charged anonymous memory from overhead to guest RAM, thread
    /// by thread: vCPUs first (they fault guest RAM in), then the others, by tid, each up to
    /// what it charged untagged. Absolute: the same input twice moves it once.
    fn set_guest_found(&mut self, tgid: u32, bytes: i64) {
        let p = self.processes.entry(tgid).or_default();
        let more = bytes - p.guest_found;
        if more <= 0 {
            return;
        }
        p.guest_found = bytes;
        p.guest_found_left += more;
        let mut keys: Vec<(bool, u32, u64)> = self
            .threads
            .iter()
            .filter(|(_, t)| t.tgid == tgid)
            .map(|((tid, m), t)| (t.class() != ThreadClass::Vcpu, *tid, *m))
            .collect();
        keys.sort_unstable();
        for (_, tid, memcg) in keys {
            self.hand_out_guest_found(tgid, (tid, memcg));
        }
    }

    fn hand_out_guest_found(&mut self, tgid: u32, key: (u32, u64)) {
        let (Some(p), Some(t)) = (self.processes.get_mut(&tgid), self.threads.get_mut(&key)) else {
            return;
        };
        let take = t.untagged_anon().clamp(0, p.guest_found_left.max(0));
        t.guest_found += take;
        p.guest_found_left -= take;
    }

    fn oom_attempt(&mut self, o: &OomAttempt) -> OomAttemptRow {
        let usage = self.memcgs.get(&o.memcg_id).and_then(|m| m.usage);
        OomAttemptRow {
            ts_ns: o.ts_ns,
            memcg: self.memcg_path(o.memcg_id),
            memcg_id: o.memcg_id,
            usage: usage.map(|u| u.usage),
            limit: usage.and_then(|u| u.limit),
            pid: o.tgid,
            tid: o.tid,
            process: self.process_name(o.tgid, &o.comm),
            class: self.thread_class(&self.thread_comm(o.tid, o.tgid, &o.comm), o.tgid),
            comm: o.comm.clone(),
            order: o.order,
            duration_ns: o.duration_ns,
            killed: o.killed,
        }
    }

    fn reclaim(&mut self, r: &Reclaim) -> ReclaimRow {
        ReclaimRow {
            ts_ns: r.ts_ns,
            memcg: self.memcg_path(r.memcg_id),
            memcg_id: r.memcg_id,
            pid: r.tgid,
            tid: r.tid,
            process: self.process_name(r.tgid, &r.comm),
            comm: r.comm.clone(),
            duration_ns: r.duration_ns,
            nr_reclaimed: r.nr_reclaimed,
        }
    }

    fn exit(&mut self, e: &ThreadExit) -> ExitRow {
        let info = self
            .processes
            .get(&e.tgid)
            .and_then(|p| p.info.clone())
            .unwrap_or_default();
        for key in self.keys_of_thread(e.tid) {
            if let Some(t) = self.threads.get_mut(&key) {
                t.exited = true;
                // The name it died with: a thread renamed after its last record says so here.
                if !e.comm.is_empty() && t.comm != e.comm {
                    t.comm = e.comm.clone();
                    t.set_class(&info);
                }
            }
        }
        if e.group_dead
            && let Some(p) = self.processes.get_mut(&e.tgid)
        {
            p.dead = true;
        }
        ExitRow {
            ts_ns: e.ts_ns,
            pid: e.tgid,
            tid: e.tid,
            process: self.process_name(e.tgid, &e.comm),
            comm: e.comm.clone(),
            group_dead: e.group_dead,
        }
    }

    /// Drops an exited thread after its final totals were read; its bytes stay in its process.
    pub fn forget_thread(&mut self, tid: u32) {
        let keys = self.keys_of_thread(tid);
        for key in keys {
            if let Some(t) = self.threads.remove(&key) {
                self.memcgs_of_thread.remove(&tid);
                let guest = t.guest();
                let p = self.processes.entry(t.tgid).or_default();
                add(&mut p.retired, &t.totals);
                p.retired_guest += guest;
                let b = p.retired_by.entry((key.1, t.class())).or_default();
                add(&mut b.0, &t.totals);
                b.1 += guest;
                p.live_threads = p.live_threads.saturating_sub(1);
                if p.dead && p.live_threads == 0 {
                    // Its anonymous pages were uncharged at its exit (by its own last thread,
                    // mostly); its page cache was not.
                    let retired = std::mem::take(&mut p.retired_by);
                    for (memcg, class, bytes) in page_cache_left(&retired) {
                        *self
                            .memcgs
                            .entry(memcg)
                            .or_default()
                            .left_behind
                            .entry(class)
                            .or_default() += bytes;
                    }
                }
            }
        }
        if self.processes.len() > MAX_RETIRED_PROCESSES {
            let mut dead: Vec<(u64, u32)> = self
                .processes
                .iter()
                .filter(|(_, p)| p.live_threads == 0)
                .map(|(pid, p)| (p.last_ts, *pid))
                .collect();
            dead.sort();
            let excess = self.processes.len() - MAX_RETIRED_PROCESSES;
            for (_, pid) in dead.into_iter().take(excess) {
                self.processes.remove(&pid);
            }
        }
    }

    /// Gives back map capacity left over from a burst of threads (a churn of short-lived threads
    /// must not leave the collector at its peak size).
    pub fn shrink(&mut self) {
        if self.threads.len() * 4 < self.threads.capacity() {
            self.threads.shrink_to_fit();
        }
        if self.memcgs_of_thread.len() * 4 < self.memcgs_of_thread.capacity() {
            self.memcgs_of_thread.shrink_to_fit();
        }
        if self.processes.len() * 4 < self.processes.capacity() {
            self.processes.shrink_to_fit();
        }
    }

    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// Takes the samples the growth windows are computed from. The collector calls it at every
    /// sweep; replay calls it with the recorded stamps.
    pub fn tick(&mut self, now_ns: u64) {
        self.last_tick_ns = self.last_tick_ns.max(now_ns);
        // Per memcg, its own bytes per class: totals (for the windows) and kinds.
        let mut own: HashMap<u64, (ClassVec, ClassKinds)> = HashMap::default();
        let mut put = |memcg: u64, class: ThreadClass, t: &ChargeTotals, guest: i64| {
            let (v, k) = own.entry(memcg).or_default();
            v.add(class, t.total(), guest, t.file - t.shmem);
            k.add(class, t);
        };
        let dead: std::collections::HashSet<u32> = self
            .processes
            .iter()
            .filter(|(_, p)| p.dead)
            .map(|(pid, _)| *pid)
            .collect();
        for ((_, memcg), t) in self.threads.iter_mut() {
            t.history.record(now_ns, (t.totals.total(), t.guest()));
            // A process whose last thread exited holds nothing any more; its exit uncharges
            // land on whichever of its threads ran the teardown.
            if !dead.contains(&t.tgid) {
                put(*memcg, t.class(), &t.totals, t.guest());
            }
        }
        for p in self.processes.values().filter(|p| !p.dead) {
            for ((memcg, class), (totals, guest)) in &p.retired_by {
                put(*memcg, *class, totals, *guest);
            }
        }
        for (id, m) in &self.memcgs {
            for (class, bytes) in &m.left_behind {
                let page_cache = ChargeTotals {
                    file: *bytes,
                    ..ChargeTotals::default()
                };
                put(*id, *class, &page_cache, 0);
            }
        }
        // Roll each memcg's own bytes up into every known ancestor.
        let parents = self.parents();
        let mut subtree: HashMap<u64, (ClassVec, ClassKinds)> = HashMap::default();
        for (id, (v, k)) in &own {
            let mut at = Some(*id);
            while let Some(m) = at {
                let (sv, sk) = subtree.entry(m).or_default();
                sv.add_all(v);
                sk.add_all(k);
                at = parents.get(&m).copied();
            }
        }
        for (id, m) in self.memcgs.iter_mut() {
            let (v, k) = subtree.get(id).copied().unwrap_or_default();
            if !v.is_zero() || !m.classes.is_empty() {
                m.classes.record(now_ns, v);
                m.class_peak.max_with(&v);
                m.class_kinds = k;
            }
            if let Some(u) = m.usage {
                m.usage_history.record(now_ns, u.usage);
            }
            if let Some(p) = m.pressure {
                m.pressure_history.record(now_ns, p);
            }
            if let Some(s) = m.stat {
                m.stat_history.record(now_ns, s);
            }
        }
    }

    /// Each memcg's nearest known ancestor, by path.
    fn parents(&self) -> HashMap<u64, u64> {
        let by_path: HashMap<&str, u64> = self
            .memcgs
            .iter()
            .filter(|(_, m)| !m.path.is_empty())
            .map(|(id, m)| (m.path.as_str(), *id))
            .collect();
        let mut out = HashMap::default();
        for (id, m) in &self.memcgs {
            let mut p = m.path.as_str();
            while let Some((up, _)) = p.rsplit_once('/') {
                let up = if up.is_empty() { "/" } else { up };
                if let Some(pid) = by_path.get(up).filter(|pid| *pid != id) {
                    out.insert(*id, *pid);
                    break;
                }
                if up == "/" {
                    break;
                }
                p = up;
            }
        }
        out
    }

    fn under(&self, memcg_id: u64, thread_memcg: u64) -> bool {
        if memcg_id == thread_memcg {
            return true;
        }
        match (self.memcgs.get(&memcg_id), self.memcgs.get(&thread_memcg)) {
            (Some(a), Some(b)) if !a.path.is_empty() && !b.path.is_empty() => {
                is_ancestor(&a.path, &b.path)
            }
            _ => false,
        }
    }
}

fn classify_thread(comm: &str, info: &ProcessInfo) -> ThreadClass {
    classify(ThreadNames {
        thread: comm,
        process: &info.comm,
        exe: info.exe.as_deref(),
        kernel_thread: info.kernel_thread,
    })
}

/// `/a/b` is an ancestor of `/a/b/c` (and of itself); `/a/b` is not an ancestor of `/a/bc`.
pub fn is_ancestor(ancestor: &str, path: &str) -> bool {
    ancestor == "/"
        || path == ancestor
        || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}
