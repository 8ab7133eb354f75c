//! Attribution state, fed only by decoded events and by facts the collector reads (memcg paths,
//! usage/limit, process names). Live and replay run this same code; it does no I/O.
use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::{
    cgroupfs::UsageLimit,
    decode::{Charge, ChargeTotals, Event, OomVictim, Reclaim, ThreadExit},
};

/// Processes remembered after all their threads are gone, for the summary (bounded).
const MAX_RETIRED_PROCESSES: usize = 4096;

#[derive(Clone, Debug, Default)]
struct ThreadState {
    tgid: u32,
    comm: String,
    totals: ChargeTotals,
    peak: i64,
    exited: bool,
}

#[derive(Clone, Debug, Default)]
struct ProcessState {
    comm: Option<String>,
    /// Totals of this process's threads that were already forgotten.
    retired: ChargeTotals,
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
}

/// What changed, ready to be shown. Serialized as one JSON object per line by `tail --json`.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    Charge(ChargeRow),
    Oom(OomRow),
    Reclaim(ReclaimRow),
    Exit(ExitRow),
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ChargeRow {
    pub ts_ns: u64,
    pub memcg: String,
    pub memcg_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub process: String,
    /// Bytes charged since the previous row of this thread (negative: uncharged).
    pub delta: i64,
    /// Net bytes this thread has charged to this memcg since oomtrace started.
    pub total: i64,
    pub anon: i64,
    pub file: i64,
    pub kernel: i64,
    pub guest: i64,
    pub usage: Option<u64>,
    pub limit: Option<u64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OomRow {
    pub ts_ns: u64,
    /// The memcg whose limit was hit (best knowledge: see `oom_memcg`).
    pub memcg: String,
    pub memcg_id: u64,
    pub usage: Option<u64>,
    pub limit: Option<u64>,
    pub invoker_pid: u32,
    pub invoker_tid: u32,
    pub invoker_comm: String,
    pub invoker_process: String,
    pub victim_pid: u32,
    pub victim_comm: String,
    pub victim_total_vm_kb: u64,
    pub victim_anon_rss_kb: u64,
    pub victim_file_rss_kb: u64,
    pub victim_shmem_rss_kb: u64,
    pub victim_pgtables_kb: u64,
    pub victim_oom_score_adj: i32,
    /// Bytes oomtrace attributed to the victim's threads before the kill.
    pub victim_charged: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ReclaimRow {
    pub ts_ns: u64,
    pub memcg: String,
    pub memcg_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub process: String,
    pub duration_ns: u64,
    pub nr_reclaimed: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ExitRow {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub process: String,
    pub group_dead: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ThreadSummary {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub process: String,
    pub memcg: String,
    pub total: i64,
    pub peak: i64,
    pub anon: i64,
    pub file: i64,
    pub kernel: i64,
    pub guest: i64,
    pub exited: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ProcessSummary {
    pub pid: u32,
    pub process: String,
    pub total: i64,
    /// The highest net total the process reached (what it held before an OOM kill freed it).
    pub peak: i64,
    pub anon: i64,
    pub file: i64,
    pub kernel: i64,
    pub guest: i64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Counters {
    pub events: u64,
    pub ring_drops: u64,
    pub rare_drops: u64,
    pub map_full: u64,
    pub decode_errors: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub counters: Counters,
    pub processes: Vec<ProcessSummary>,
    pub threads: Vec<ThreadSummary>,
    pub ooms: Vec<OomRow>,
}

#[derive(Debug, Default)]
pub struct Model {
    threads: HashMap<(u32, u64), ThreadState>,
    processes: HashMap<u32, ProcessState>,
    memcgs: HashMap<u64, MemcgState>,
    ooms: Vec<OomRow>,
    pub counters: Counters,
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

    pub fn set_memcg_path(&mut self, id: u64, path: String) {
        self.memcgs.entry(id).or_default().path = path;
    }

    pub fn set_usage(&mut self, id: u64, usage: UsageLimit) {
        self.memcgs.entry(id).or_default().usage = Some(usage);
    }

    pub fn memcg_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.memcgs.keys().copied()
    }

    pub fn knows_process(&self, tgid: u32) -> bool {
        self.processes.get(&tgid).is_some_and(|p| p.comm.is_some())
    }

    pub fn set_process_comm(&mut self, tgid: u32, comm: String) {
        self.processes.entry(tgid).or_default().comm = Some(comm);
    }

    /// (tid, memcg) pairs of live threads, for the collector's sweep of the kernel map.
    pub fn thread_keys(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.threads.keys().copied()
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
            .and_then(|p| p.comm.clone())
            .unwrap_or_else(|| fallback.to_string())
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
        }
        // The main thread's comm is the process comm; it changes at exec and prctl(PR_SET_NAME).
        if c.tid == c.tgid && !c.comm.is_empty() {
            self.processes.entry(c.tgid).or_default().comm = Some(c.comm.clone());
        }
        let t = self.threads.entry(key).or_default();
        let delta = c.totals.total() - t.totals.total();
        if delta == 0 && t.totals == c.totals && !t.comm.is_empty() {
            return None;
        }
        t.tgid = c.tgid;
        if !c.comm.is_empty() {
            t.comm = c.comm.clone();
        }
        t.totals = c.totals;
        t.peak = t.peak.max(c.totals.total());
        let (comm, totals) = (t.comm.clone(), t.totals);
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
        let memcg_id = self.oom_memcg(v.invoker_tid).unwrap_or(0);
        let usage = self.memcgs.get(&memcg_id).and_then(|m| m.usage);
        let invoker_comm = self
            .threads
            .iter()
            .find(|((t, _), _)| *t == v.invoker_tid)
            .map(|(_, s)| s.comm.clone())
            .unwrap_or_else(|| v.invoker_comm.clone());
        let victim_charged = self
            .threads
            .values()
            .filter(|t| t.tgid == v.victim_pid)
            .map(|t| t.totals.total())
            .sum::<i64>()
            + self
                .processes
                .get(&v.victim_pid)
                .map_or(0, |p| p.retired.total());
        let victim_comm = if v.victim_comm.is_empty() {
            self.process_name(v.victim_pid, "?")
        } else {
            v.victim_comm.clone()
        };
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
            victim_pid: v.victim_pid,
            victim_comm,
            victim_total_vm_kb: v.total_vm_kb,
            victim_anon_rss_kb: v.anon_rss_kb,
            victim_file_rss_kb: v.file_rss_kb,
            victim_shmem_rss_kb: v.shmem_rss_kb,
            victim_pgtables_kb: v.pgtables_kb,
            victim_oom_score_adj: v.oom_score_adj,
            victim_charged,
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
                let p = self.processes.entry(t.tgid).or_default();
                add(&mut p.retired, &t.totals);
                p.live_threads = p.live_threads.saturating_sub(1);
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
                memcg: self.memcg_path(*memcg),
                total: t.totals.total(),
                peak: t.peak,
                anon: t.totals.anon,
                file: t.totals.file,
                kernel: t.totals.kernel,
                guest: t.totals.guest,
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
                total: t.total(),
                peak: self
                    .processes
                    .get(&pid)
                    .map_or(t.total(), |p| p.peak.max(t.total())),
                anon: t.anon,
                file: t.file,
                kernel: t.kernel,
                guest: t.guest,
            })
            .collect();
        processes.sort_by(|a, b| b.total.cmp(&a.total).then(a.pid.cmp(&b.pid)));
        Summary {
            kind: "summary",
            counters: self.counters.clone(),
            processes,
            threads,
            ooms: self.ooms.clone(),
        }
    }
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
