//! Attribution state, fed only by decoded events, ticks and facts the collector reads (memcg
//! paths, usage/limit, process names and command lines). Live and replay run this same code; it
//! does no I/O.
mod history;
mod rows;
pub mod views;

use std::collections::{BTreeMap, HashMap};

pub use rows::*;
use views::{
    ClassVec, MemcgView, PostMortem, ProcessView, Snapshot, ThreadView, WINDOW_LONG_NS,
    WINDOW_SHORT_NS,
};

use self::history::Series;
use crate::{
    cgroupfs::UsageLimit,
    decode::{Charge, ChargeTotals, Event, OomVictim, Reclaim, ThreadExit},
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
#[derive(Clone, Debug, Default, PartialEq)]
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
    /// (total, guest) at past ticks.
    history: Series<(i64, i64)>,
}

impl ThreadState {
    fn class(&self) -> ThreadClass {
        self.class.unwrap_or(ThreadClass::Foreign)
    }

    /// Guest RAM among this thread's charges: charges inside KVM guest faults or inside the
    /// guest RAM mapping; for a TCG vCPU whose mapping is unknown, all its anonymous charges.
    fn guest(&self) -> i64 {
        let anon = self.totals.anon.max(0);
        if self.tcg_guess {
            anon
        } else {
            self.totals.guest.clamp(0, anon)
        }
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
    /// The same per memcg and class: an exited thread's pages stay with the process until the
    /// process ends, so they stay in the class views until then.
    retired_by: HashMap<(u64, ThreadClass), (i64, i64)>,
    /// Its last thread exited: the retired buckets go with its last forgotten thread.
    dead: bool,
    live_threads: usize,
    last_ts: u64,
    /// Running net total of all its threads, and the highest it reached.
    total: i64,
    peak: i64,
}

#[derive(Clone, Debug, Default)]
struct MemcgState {
    path: String,
    usage: Option<UsageLimit>,
    identity: Option<PodIdentity>,
    usage_history: Series<u64>,
    /// This memcg and everything below it, per class, at each tick.
    classes: Series<ClassVec>,
    class_peak: ClassVec,
}

#[derive(Debug)]
pub struct Model {
    threads: HashMap<(u32, u64), ThreadState>,
    processes: HashMap<u32, ProcessState>,
    memcgs: HashMap<u64, MemcgState>,
    ooms: Vec<OomRow>,
    last_tick_ns: u64,
    budget_constants: budget::Constants,
    budget_ratio: f64,
    pub counters: Counters,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            threads: HashMap::new(),
            processes: HashMap::new(),
            memcgs: HashMap::new(),
            ooms: Vec::new(),
            last_tick_ns: 0,
            budget_constants: budget::KUBEVIRT_CURRENT,
            budget_ratio: 1.0,
            counters: Counters::default(),
        }
    }
}

fn add(a: &mut ChargeTotals, b: &ChargeTotals) {
    a.anon += b.anon;
    a.file += b.file;
    a.kernel += b.kernel;
    a.guest += b.guest;
}

impl Model {
    pub fn new() -> Self {
        Self::default()
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
    }

    pub fn set_usage(&mut self, id: u64, usage: UsageLimit) {
        self.memcgs.entry(id).or_default().usage = Some(usage);
    }

    pub fn memcg_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.memcgs.keys().copied()
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

    pub fn knows_thread(&self, tid: u32, memcg_id: u64) -> bool {
        self.threads.contains_key(&(tid, memcg_id))
    }

    pub fn keys_of_thread(&self, tid: u32) -> Vec<(u32, u64)> {
        self.threads
            .keys()
            .filter(|(t, _)| *t == tid)
            .copied()
            .collect()
    }

    fn memcg_path(&self, id: u64) -> String {
        match self.memcgs.get(&id) {
            Some(m) if !m.path.is_empty() => m.path.clone(),
            _ => format!("memcg#{id}"),
        }
    }

    fn process_name(&self, tgid: u32, fallback: &str) -> String {
        self.processes
            .get(&tgid)
            .and_then(|p| p.info.as_ref())
            .map(|i| i.comm.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| fallback.to_string())
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
            Event::OomVictim(v) => Some(Change::Oom(self.oom(v))),
            Event::Reclaim(r) => Some(Change::Reclaim(self.reclaim(r))),
            Event::ThreadExit(e) => Some(Change::Exit(self.exit(e))),
        }
    }

    /// A charge record or a sweep reading: both carry cumulative totals, so the delta is the
    /// difference to what we knew. Returns None when nothing changed.
    pub fn charge(&mut self, c: &Charge) -> Option<ChargeRow> {
        let key = (c.tid, c.memcg_id);
        if !self.threads.contains_key(&key) {
            let p = self.processes.entry(c.tgid).or_default();
            p.live_threads += 1;
            // Totals count from oomtrace's start: a thread's first record grew from zero.
            let mut t = ThreadState::default();
            t.history.record(c.ts_ns, (0, 0));
            self.threads.insert(key, t);
        }
        // The main thread's comm is the process comm; it changes at exec and prctl(PR_SET_NAME).
        if c.tid == c.tgid && !c.comm.is_empty() {
            let p = self.processes.entry(c.tgid).or_default();
            match p.info.as_mut() {
                Some(i) if i.comm != c.comm => {
                    i.comm = c.comm.clone();
                    self.reclassify(c.tgid);
                }
                Some(_) => {}
                None => {
                    p.info = Some(ProcessInfo {
                        comm: c.comm.clone(),
                        ..Default::default()
                    })
                }
            }
        }
        let info = self.processes.get(&c.tgid).and_then(|p| p.info.clone());
        let t = self.threads.entry(key).or_default();
        let delta = c.totals.total() - t.totals.total();
        let comm_changed = !c.comm.is_empty() && c.comm != t.comm;
        if delta == 0 && t.totals == c.totals && !t.comm.is_empty() && !comm_changed {
            return None;
        }
        t.tgid = c.tgid;
        if !c.comm.is_empty() {
            t.comm = c.comm.clone();
        }
        if comm_changed || t.class.is_none() {
            t.set_class(&info.unwrap_or_default());
        }
        t.totals = c.totals;
        t.peak = t.peak.max(c.totals.total());
        let (comm, totals, class) = (t.comm.clone(), t.totals, t.class());
        if let Some(p) = self.processes.get_mut(&c.tgid) {
            p.last_ts = p.last_ts.max(c.ts_ns);
            p.total += delta;
            p.peak = p.peak.max(p.total);
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
            kernel: totals.kernel,
            guest: totals.guest,
            usage: usage.map(|u| u.usage),
            limit: usage.and_then(|u| u.limit),
        })
    }

    /// The memcg whose limit was hit: among the invoker's memcg and its known ancestors, the
    /// deepest with a limit whose peak reached it; else the deepest with a limit.
    fn oom_memcg(&self, invoker_tid: u32) -> Option<u64> {
        let own = self
            .threads
            .keys()
            .find(|(t, _)| *t == invoker_tid)
            .map(|(_, m)| *m)?;
        let own_path = self
            .memcgs
            .get(&own)
            .map(|m| m.path.clone())
            .unwrap_or_default();
        let mut candidates: Vec<(usize, u64, bool)> = self
            .memcgs
            .iter()
            .filter(|(id, m)| {
                **id == own || (!m.path.is_empty() && is_ancestor(&m.path, &own_path))
            })
            .filter_map(|(id, m)| {
                let u = m.usage?;
                let limit = u.limit?;
                let reached = u.peak.unwrap_or(u.usage) + (1 << 20) >= limit;
                Some((m.path.len(), *id, reached))
            })
            .collect();
        candidates.sort();
        candidates
            .iter()
            .rev()
            .find(|c| c.2)
            .or(candidates.last())
            .map(|c| c.1)
            .or(Some(own))
    }

    fn oom(&mut self, v: &OomVictim) -> OomRow {
        // Bring the windows up to the kill.
        self.tick(v.ts_ns.max(self.last_tick_ns));
        let memcg_id = self.oom_memcg(v.invoker_tid).unwrap_or(0);
        let usage = self.memcgs.get(&memcg_id).and_then(|m| m.usage);
        let invoker = self
            .threads
            .iter()
            .find(|((t, _), _)| *t == v.invoker_tid)
            .map(|(_, s)| (s.comm.clone(), s.class()));
        let (invoker_comm, invoker_class) = invoker.unwrap_or_else(|| {
            let info = self
                .processes
                .get(&v.invoker_tgid)
                .and_then(|p| p.info.clone())
                .unwrap_or_default();
            (
                v.invoker_comm.clone(),
                classify_thread(&v.invoker_comm, &info),
            )
        });
        let victim_threads = || self.threads.values().filter(|t| t.tgid == v.victim_pid);
        let victim_charged = victim_threads().map(|t| t.totals.total()).sum::<i64>()
            + self
                .processes
                .get(&v.victim_pid)
                .map_or(0, |p| p.retired.total());
        let victim_comm = if v.victim_comm.is_empty() {
            self.process_name(v.victim_pid, "?")
        } else {
            v.victim_comm.clone()
        };
        let victim_class = self.process_class(v.victim_pid);
        let post_mortem = (memcg_id != 0).then(|| {
            let baseline_guest = self.baseline_guest(v.victim_pid);
            let victim_guest =
                victim_threads().map(ThreadState::guest).sum::<i64>() + baseline_guest;
            let rss = (v.anon_rss_kb + v.file_rss_kb + v.shmem_rss_kb) as i64 * 1024;
            Box::new(self.post_mortem(
                memcg_id,
                v.ts_ns,
                (&invoker_comm, invoker_class, v.invoker_tgid),
                (&victim_comm, victim_class, rss, victim_guest),
            ))
        });
        let row = OomRow {
            ts_ns: v.ts_ns,
            memcg: if memcg_id == 0 {
                "?".into()
            } else {
                self.memcg_path(memcg_id)
            },
            memcg_id,
            usage: usage.map(|u| u.usage),
            limit: usage.and_then(|u| u.limit),
            invoker_pid: v.invoker_tgid,
            invoker_tid: v.invoker_tid,
            invoker_process: self.process_name(v.invoker_tgid, &invoker_comm),
            invoker_comm,
            invoker_class,
            victim_pid: v.victim_pid,
            victim_comm,
            victim_class,
            victim_total_vm_kb: v.total_vm_kb,
            victim_anon_rss_kb: v.anon_rss_kb,
            victim_file_rss_kb: v.file_rss_kb,
            victim_shmem_rss_kb: v.shmem_rss_kb,
            victim_pgtables_kb: v.pgtables_kb,
            victim_oom_score_adj: v.oom_score_adj,
            victim_charged,
            post_mortem,
        };
        self.ooms.push(row.clone());
        row
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
        for ((tid, _), t) in self.threads.iter_mut() {
            if *tid == e.tid {
                t.exited = true;
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
                let guest = t.guest();
                let p = self.processes.entry(t.tgid).or_default();
                add(&mut p.retired, &t.totals);
                let b = p.retired_by.entry((key.1, t.class())).or_default();
                b.0 += t.totals.total();
                b.1 += guest;
                p.live_threads = p.live_threads.saturating_sub(1);
                if p.dead && p.live_threads == 0 {
                    // Its pages were uncharged at its exit (by its own last thread, mostly).
                    p.retired_by.clear();
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

    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// Takes the samples the growth windows are computed from. The collector calls it at every
    /// sweep; replay calls it with the recorded stamps.
    pub fn tick(&mut self, now_ns: u64) {
        self.last_tick_ns = self.last_tick_ns.max(now_ns);
        let mut own: HashMap<u64, ClassVec> = HashMap::new();
        for ((_, memcg), t) in self.threads.iter_mut() {
            t.history.record(now_ns, (t.totals.total(), t.guest()));
            own.entry(*memcg)
                .or_default()
                .add(t.class(), t.totals.total(), t.guest());
        }
        for p in self.processes.values() {
            for ((memcg, class), (total, guest)) in &p.retired_by {
                own.entry(*memcg).or_default().add(*class, *total, *guest);
            }
        }
        // Roll each memcg's own bytes up into every known ancestor.
        let parents = self.parents();
        let mut subtree: HashMap<u64, ClassVec> = HashMap::new();
        for (id, v) in &own {
            let mut at = Some(*id);
            while let Some(m) = at {
                subtree.entry(m).or_default().add_all(v);
                at = parents.get(&m).copied();
            }
        }
        for (id, m) in self.memcgs.iter_mut() {
            let v = subtree.get(id).copied().unwrap_or_default();
            if !v.is_zero() || !m.classes.is_empty() {
                m.classes.record(now_ns, v);
                m.class_peak.max_with(&v);
            }
            if let Some(u) = m.usage {
                m.usage_history.record(now_ns, u.usage);
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
        let mut out = HashMap::new();
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

    /// VM facts of the processes charging in or below `memcg_id` (qemu's -m, -smp, -name).
    fn vm_facts(&self, memcg_id: u64) -> VmFacts {
        let mut vm = VmFacts::default();
        let mut seen = std::collections::HashSet::new();
        for ((_, m), t) in &self.threads {
            if seen.insert(t.tgid)
                && self.under(memcg_id, *m)
                && let Some(info) = self.processes.get(&t.tgid).and_then(|p| p.info.as_ref())
            {
                vm.merge(info.vm.clone());
            }
        }
        vm
    }

    /// Guest RAM a qemu process already held when oomtrace started (capped at the guest size).
    fn baseline_guest(&self, tgid: u32) -> i64 {
        let Some(info) = self.processes.get(&tgid).and_then(|p| p.info.as_ref()) else {
            return 0;
        };
        if !classify_thread(&info.comm, info).is_qemu() {
            return 0;
        }
        let anon = info.rss_at_start.map_or(0, |(a, _)| a);
        let capped = info.vm.guest_memory.map_or(anon, |g| anon.min(g));
        i64::try_from(capped).unwrap_or(i64::MAX)
    }

    /// Bytes per class held in or below `memcg_id`: charged since start plus, for processes
    /// that were already running, their resident memory at start.
    fn held_by_class(&self, memcg_id: u64, now: &ClassVec) -> ClassVec {
        let mut held = *now;
        let mut seen = std::collections::HashSet::new();
        for ((_, m), t) in &self.threads {
            if !seen.insert(t.tgid) || !self.under(memcg_id, *m) {
                continue;
            }
            // Only a process that lives in this memcg holds its resident memory here; others
            // (the creator of a cgroup, a reader of its files) only charged kernel objects.
            let path = &self
                .memcgs
                .get(&memcg_id)
                .map(|m| m.path.clone())
                .unwrap_or_default();
            if let Some(info) = self.processes.get(&t.tgid).and_then(|p| p.info.as_ref())
                && let Some((anon, other)) = info.rss_at_start
                && info.memcg.as_deref().is_some_and(|m| is_ancestor(path, m))
            {
                let class = classify_thread(&info.comm, info);
                let total = i64::try_from(anon + other).unwrap_or(i64::MAX);
                held.add(class, total, self.baseline_guest(t.tgid));
            }
        }
        held
    }

    pub fn memcg_view(&self, memcg_id: u64, now_ns: u64) -> Option<MemcgView> {
        let m = self.memcgs.get(&memcg_id)?;
        let now = m.classes.latest().copied().unwrap_or_default();
        let ago = |w| m.classes.at(now_ns, w).map(|(_, v)| *v).unwrap_or(now);
        let classes = views::class_views(
            &now,
            &m.class_peak,
            &ago(WINDOW_SHORT_NS),
            &ago(WINDOW_LONG_NS),
        );
        let rate = |w| {
            let (t, then) = m.usage_history.at(now_ns, w)?;
            let u = m.usage?.usage;
            let dt = now_ns.saturating_sub(t) as f64 / 1e9;
            (dt >= 1.0).then(|| (u as f64 - *then as f64) / dt)
        };
        let (rate_10s, rate_60s) = (rate(WINDOW_SHORT_NS), rate(WINDOW_LONG_NS));
        let limit = m.usage.and_then(|u| u.limit);
        let headroom = match (m.usage, limit) {
            (Some(u), Some(l)) => Some(l as i64 - u.usage as i64),
            _ => None,
        };
        let time_to_limit_s = match (headroom, rate_10s) {
            (Some(h), Some(r)) if r > 0.0 => Some(h.max(0) as f64 / r),
            _ => None,
        };
        let vm = self.vm_facts(memcg_id);
        let guest: i64 = now.guest.iter().sum();
        let total: i64 = now.total.iter().sum();
        let (budget, budget_profile) = match vm.guest_memory {
            Some(g) => {
                let shape = budget::VmShape {
                    guest_memory: g,
                    vcpus: vm.vcpus.unwrap_or(1),
                    graphics: true,
                };
                let b = budget::compute(&shape, &self.budget_constants, self.budget_ratio);
                let held = self.held_by_class(memcg_id, &now);
                (
                    views::budget_views(&b, &held),
                    Some(self.budget_constants.name),
                )
            }
            None => (Vec::new(), None),
        };
        Some(MemcgView {
            memcg: self.memcg_path(memcg_id),
            memcg_id,
            pod: m.identity.clone(),
            vm: vm.display_name(),
            usage: m.usage.map(|u| u.usage),
            limit,
            headroom,
            rate_10s,
            rate_60s,
            time_to_limit_s,
            classes,
            guest,
            overhead: total - guest,
            budget,
            budget_profile,
        })
    }

    /// Threads in or below `memcg_id` (all when None), noise included.
    fn thread_views_all(&self, memcg_id: Option<u64>, now_ns: u64) -> Vec<ThreadView> {
        let mut v: Vec<ThreadView> = self
            .threads
            .iter()
            .filter(|((_, m), _)| memcg_id.is_none_or(|id| self.under(id, *m)))
            .map(|((tid, m), t)| {
                let (total, guest) = (t.totals.total(), t.guest());
                let ago = |w| t.history.at(now_ns, w).map_or((total, guest), |(_, v)| *v);
                let (ago10, ago60) = (ago(WINDOW_SHORT_NS), ago(WINDOW_LONG_NS));
                ThreadView {
                    pid: t.tgid,
                    tid: *tid,
                    comm: t.comm.clone(),
                    process: self.process_name(t.tgid, &t.comm),
                    class: t.class(),
                    memcg: self.memcg_path(*m),
                    now: total,
                    peak: t.peak,
                    guest,
                    last_10s: total - ago10.0,
                    last_60s: total - ago60.0,
                    overhead_10s: (total - guest) - (ago10.0 - ago10.1),
                    overhead_60s: (total - guest) - (ago60.0 - ago60.1),
                }
            })
            .collect();
        v.sort_by_key(|t| {
            (
                std::cmp::Reverse(t.last_60s),
                std::cmp::Reverse(t.now),
                t.tid,
            )
        });
        v
    }

    fn without_noise(mut threads: Vec<ThreadView>) -> Vec<ThreadView> {
        threads.retain(|t| !views::is_noise(&[t.now, t.peak, t.last_60s]));
        threads
    }

    fn process_views(&self, threads: &[ThreadView]) -> Vec<ProcessView> {
        let mut by_pid: BTreeMap<u32, ProcessView> = BTreeMap::new();
        for t in threads {
            let p = by_pid.entry(t.pid).or_insert_with(|| ProcessView {
                pid: t.pid,
                process: t.process.clone(),
                class: self.process_class(t.pid),
                now: 0,
                peak: 0,
                guest: 0,
                last_10s: 0,
                last_60s: 0,
                overhead_10s: 0,
                overhead_60s: 0,
            });
            p.now += t.now;
            p.guest += t.guest;
            p.last_10s += t.last_10s;
            p.last_60s += t.last_60s;
            p.overhead_10s += t.overhead_10s;
            p.overhead_60s += t.overhead_60s;
        }
        let mut v: Vec<ProcessView> = by_pid
            .into_values()
            .map(|mut p| {
                if let Some(s) = self.processes.get(&p.pid) {
                    p.now += s.retired.total();
                    p.peak = s.peak.max(p.now);
                }
                p
            })
            .collect();
        v.retain(|p| !views::is_noise(&[p.now, p.peak, p.last_60s]));
        v.sort_by_key(|p| (std::cmp::Reverse(p.now), p.pid));
        v
    }

    fn post_mortem(
        &self,
        memcg_id: u64,
        now_ns: u64,
        invoker: (&str, ThreadClass, u32),
        victim: (&str, ThreadClass, i64, i64),
    ) -> PostMortem {
        let memcg = self
            .memcg_view(memcg_id, now_ns)
            .unwrap_or_else(|| MemcgView {
                memcg: self.memcg_path(memcg_id),
                memcg_id,
                pod: None,
                vm: None,
                usage: None,
                limit: None,
                headroom: None,
                rate_10s: None,
                rate_60s: None,
                time_to_limit_s: None,
                classes: Vec::new(),
                guest: 0,
                overhead: 0,
                budget: Vec::new(),
                budget_profile: None,
            });
        let threads = self.thread_views_all(Some(memcg_id), now_ns);
        let processes = self.process_views(&threads);
        let threads = Self::without_noise(threads);
        // Guest RAM up to the guest's size is what the pod was sized for; what pushes a pod over
        // is overhead. The culprit: the process whose overhead grew most, in the last 10 s when
        // that is a clear mover, else in the last 60 s.
        let by10 = processes.iter().max_by_key(|p| p.overhead_10s);
        let by60 = processes.iter().max_by_key(|p| p.overhead_60s);
        let (grower, grew_in) = match by10 {
            Some(p) if p.overhead_10s >= 1 << 20 => (Some(p), "10 s"),
            _ => (by60, "60 s"),
        };
        let sentence = views::sentence(&memcg, grower, grew_in, invoker, victim);
        PostMortem {
            sentence,
            memcg,
            top: threads.into_iter().take(5).collect(),
            processes: processes.into_iter().take(20).collect(),
            victim_guest: victim.3,
        }
    }

    /// The state of every charged memcg (limited ones first, least headroom first) and the
    /// biggest movers, for `tail --by`.
    pub fn snapshot(&self, now_ns: u64) -> Snapshot {
        let mut memcgs: Vec<MemcgView> = self
            .memcgs
            .iter()
            .filter(|(_, m)| m.classes.latest().is_some_and(|v| !v.is_zero()))
            .filter_map(|(id, _)| self.memcg_view(*id, now_ns))
            .collect();
        memcgs.sort_by_key(|m| (m.headroom.is_none(), m.headroom, m.memcg.clone()));
        let threads = self.thread_views_all(None, now_ns);
        let processes = self.process_views(&threads);
        let threads = Self::without_noise(threads);
        Snapshot {
            kind: "snapshot",
            ts_ns: now_ns,
            memcgs,
            processes,
            threads,
        }
    }

    pub fn summary(&self) -> Summary {
        let mut per_process: BTreeMap<u32, ChargeTotals> = BTreeMap::new();
        for (pid, p) in &self.processes {
            add(per_process.entry(*pid).or_default(), &p.retired);
        }
        let mut threads = Vec::new();
        for ((tid, memcg), t) in &self.threads {
            add(per_process.entry(t.tgid).or_default(), &t.totals);
            threads.push(ThreadSummary {
                pid: t.tgid,
                tid: *tid,
                comm: t.comm.clone(),
                process: self.process_name(t.tgid, &t.comm),
                class: t.class(),
                memcg: self.memcg_path(*memcg),
                total: t.totals.total(),
                peak: t.peak,
                anon: t.totals.anon,
                file: t.totals.file,
                kernel: t.totals.kernel,
                guest: t.guest(),
                exited: t.exited,
            });
        }
        threads.sort_by(|a, b| b.total.cmp(&a.total).then(a.tid.cmp(&b.tid)));
        let mut processes: Vec<ProcessSummary> = per_process
            .into_iter()
            .filter(|(_, t)| *t != ChargeTotals::default())
            .map(|(pid, t)| ProcessSummary {
                pid,
                process: self.process_name(pid, "?"),
                class: self.process_class(pid),
                total: t.total(),
                peak: self
                    .processes
                    .get(&pid)
                    .map_or(t.total(), |p| p.peak.max(t.total())),
                anon: t.anon,
                file: t.file,
                kernel: t.kernel,
                guest: self.process_guest(pid),
            })
            .collect();
        processes.sort_by(|a, b| b.total.cmp(&a.total).then(a.pid.cmp(&b.pid)));
        Summary {
            kind: "summary",
            counters: self.counters.clone(),
            processes,
            threads,
            ooms: self.ooms.clone(),
            memcgs: self.snapshot(self.last_tick_ns).memcgs,
        }
    }

    fn process_guest(&self, tgid: u32) -> i64 {
        self.threads
            .values()
            .filter(|t| t.tgid == tgid)
            .map(ThreadState::guest)
            .sum::<i64>()
            + self
                .processes
                .get(&tgid)
                .map_or(0, |p| p.retired.guest.clamp(0, p.retired.anon.max(0)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(tid: u32, tgid: u32, memcg: u64, comm: &str, anon: i64) -> Event {
        Event::Charge(Charge {
            ts_ns: 1,
            tid,
            tgid,
            memcg_id: memcg,
            comm: comm.into(),
            totals: ChargeTotals {
                anon,
                ..Default::default()
            },
        })
    }

    #[test]
    fn charge_delta_is_difference_of_cumulative_totals() {
        let mut m = Model::new();
        m.set_process_comm(10, "qemu-system-x86".into());
        let Some(Change::Charge(a)) = m.apply(&charge(11, 10, 5, "CPU 0/KVM", 4096)) else {
            panic!()
        };
        assert_eq!(
            (a.delta, a.total, a.process.as_str()),
            (4096, 4096, "qemu-system-x86")
        );
        let Some(Change::Charge(b)) = m.apply(&charge(11, 10, 5, "CPU 0/KVM", 300_000)) else {
            panic!()
        };
        assert_eq!((b.delta, b.total), (300_000 - 4096, 300_000));
        assert_eq!(
            m.apply(&charge(11, 10, 5, "CPU 0/KVM", 300_000)),
            None,
            "a sweep with no change is silent"
        );
    }

    #[test]
    fn forgotten_threads_keep_their_bytes_in_the_process_summary() {
        let mut m = Model::new();
        m.apply(&charge(11, 10, 5, "CPU 0/KVM", 8192));
        m.apply(&charge(12, 10, 5, "IO iothread1", 4096));
        m.forget_thread(11);
        let s = m.summary();
        assert_eq!(s.threads.len(), 1);
        assert_eq!(s.processes[0].total, 12288);
        assert_eq!(s.processes[0].peak, 12288);
        assert_eq!(m.thread_count(), 1);
    }

    #[test]
    fn oom_memcg_is_deepest_limited_ancestor_that_reached_its_limit() {
        let mut m = Model::new();
        m.set_memcg_path(1, "/kubepods/pod1".into());
        m.set_memcg_path(2, "/kubepods/pod1/ctr".into());
        m.set_usage(
            1,
            UsageLimit {
                usage: 100,
                limit: Some(100 << 20),
                peak: Some(100 << 20),
            },
        );
        m.set_usage(
            2,
            UsageLimit {
                usage: 100,
                limit: Some(400 << 20),
                peak: Some(10 << 20),
            },
        );
        m.apply(&charge(11, 10, 2, "CPU 1/KVM", 4096));
        let v = OomVictim {
            ts_ns: 2,
            invoker_tid: 11,
            invoker_tgid: 10,
            invoker_comm: "CPU 1/KVM".into(),
            victim_pid: 10,
            victim_comm: "qemu-system-x86".into(),
            total_vm_kb: 0,
            anon_rss_kb: 0,
            file_rss_kb: 0,
            shmem_rss_kb: 0,
            pgtables_kb: 0,
            uid: 0,
            oom_score_adj: 0,
        };
        let Some(Change::Oom(o)) = m.apply(&Event::OomVictim(v)) else {
            panic!()
        };
        assert_eq!(o.memcg, "/kubepods/pod1");
        assert_eq!(o.victim_charged, 4096);
        assert_eq!(o.invoker_comm, "CPU 1/KVM");
    }

    #[test]
    fn is_ancestor_respects_path_component_boundaries() {
        assert!(is_ancestor("/a/b", "/a/b/c"));
        assert!(is_ancestor("/a/b", "/a/b"));
        assert!(is_ancestor("/", "/x"));
        assert!(!is_ancestor("/a/b", "/a/bc"));
        assert!(!is_ancestor("/a/b/c", "/a/b"));
    }
}
