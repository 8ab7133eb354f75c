//! An OOM kill as the model sees it: which memcg's limit was hit, who invoked the killer, what
//! the victim held, and the post-mortem of what grew before. Identity comes from the kernel's
//! facts at the event (the invoker's comm and memcg read from its task), never from what the
//! model remembers of the thread: a thread that joined a pod's cgroup and exec'd, as
//! `kubectl exec` does, charged other memcgs under another name before.
use super::{Change, GroupVictim, Model, OomGroupVictimRow, OomRow, is_ancestor};
use crate::decode::OomKill;

/// The longest pause between two victims of one group kill: the kernel kills them in one loop,
/// printing a line for each (a slow console makes that milliseconds per task).
const GROUP_GAP_NS: u64 = 2_000_000_000;
/// Victims kept per group kill (a group is a container's processes).
const MAX_GROUP_VICTIMS: usize = 4096;
/// Whether a kill joins the last OOM.
enum Member {
    /// A further process of its group kill.
    Yes(OomGroupVictimRow),
    /// A process it already counted (another of its threads).
    Again,
    /// A new OOM.
    No,
}

/// A group kill's memcg where this kernel's mark_victim cannot read it.
pub const GROUP_UNNAMED: &str = "(memory.oom.group; this kernel does not name its memcg)";

impl Model {
    /// The memcg whose limit was hit, from the memcg a charge went to: among it and its known
    /// ancestors, the deepest with a limit whose peak reached it; else the deepest with a
    /// limit; else the memcg itself.
    pub(super) fn limited_ancestor(&self, start: u64) -> u64 {
        let own_path = self
            .memcgs
            .get(&start)
            .map(|m| m.path.as_str())
            .unwrap_or_default();
        let mut candidates: Vec<(usize, u64, bool)> = self
            .memcgs
            .iter()
            .filter(|(id, m)| {
                **id == start
                    || (!own_path.is_empty()
                        && !m.path.is_empty()
                        && is_ancestor(&m.path, own_path))
            })
            .filter_map(|(id, m)| {
                let u = m.usage?;
                let limit = u.limit?;
                let reached = u.peak.unwrap_or(u.usage) + (1 << 20) >= limit;
                Some((m.path.len(), *id, reached))
            })
            .collect();
        candidates.sort_unstable();
        candidates
            .iter()
            .rev()
            .find(|c| c.2)
            .or(candidates.last())
            .map_or(start, |c| c.1)
    }

    /// The OOM's memcg and how it is known (see `OomRow::memcg_source`).
    fn oom_memcg(&self, k: &OomKill) -> (u64, &'static str) {
        if k.oom_memcg_id != 0 {
            return (k.oom_memcg_id, "kernel");
        }
        if k.invoker_memcg_id != 0 {
            return (self.limited_ancestor(k.invoker_memcg_id), "invoker");
        }
        match self.latest_key_of(k.victim.invoker_tid) {
            Some((_, m)) => (self.limited_ancestor(m), "charges"),
            None => (0, "charges"),
        }
    }

    /// What oomtrace attributed to a process's threads before now: (total, anonymous part).
    fn charged_by(&self, tgid: u32) -> (i64, i64) {
        let threads = || self.threads.values().filter(|t| t.tgid == tgid);
        let retired = self.processes.get(&tgid).map(|p| p.retired);
        (
            threads().map(|t| t.totals.total()).sum::<i64>() + retired.map_or(0, |r| r.total()),
            threads().map(|t| t.totals.anon).sum::<i64>() + retired.map_or(0, |r| r.anon),
        )
    }

    /// A further victim of the group kill the last OOM began, a process not yet counted: by the
    /// same invoker in the same memcg OOM call (the kernel kills more than one process in one
    /// call only for memory.oom.group), or, where the call is not seen, with the same group
    /// memcg soon after the group's previous victim.
    fn group_member(&mut self, k: &OomKill) -> Member {
        let v = &k.victim;
        let Some(last) = self.ooms.last() else {
            return Member::No;
        };
        let previous = last.group_victims.last().map_or(last.ts_ns, |g| g.ts_ns);
        let same_call = k.oom_start_ns != 0 && last.oom_start_ns == k.oom_start_ns;
        let same_group = k.group_memcg_id != 0
            && last.group_memcg_id == k.group_memcg_id
            && v.ts_ns.saturating_sub(previous) <= GROUP_GAP_NS;
        if !(same_call || same_group) || last.invoker_tid != v.invoker_tid {
            return Member::No;
        }
        // The kernel walks the group's threads: a further thread of a process already killed
        // is marked (and printed) too, under its own id. One process, counted once.
        let process = self.process_of_thread(v.victim_pid);
        let counted = |pid: u32| pid == v.victim_pid || pid == process;
        if counted(last.victim_pid) || last.group_victims.iter().any(|g| counted(g.pid)) {
            return Member::Again;
        }
        let victim = GroupVictim {
            ts_ns: v.ts_ns,
            pid: v.victim_pid,
            comm: if v.victim_comm.is_empty() {
                self.process_name(v.victim_pid, "?")
            } else {
                v.victim_comm.clone()
            },
            class: self.process_class(v.victim_pid),
            anon_rss_kb: v.anon_rss_kb,
            file_rss_kb: v.file_rss_kb,
            shmem_rss_kb: v.shmem_rss_kb,
            charged: self.charged_by(v.victim_pid).0,
        };
        let Some(row) = self.ooms.last_mut() else {
            return Member::No;
        };
        if row.group.is_none() {
            // Known only as a second kill of the same OOM call: the group memcg is not named.
            row.group = Some(GROUP_UNNAMED.into());
        }
        if row.group_victims.len() < MAX_GROUP_VICTIMS {
            row.group_victims.push(victim.clone());
        }
        Member::Yes(OomGroupVictimRow {
            oom_ts_ns: row.ts_ns,
            invoker_tid: row.invoker_tid,
            group: row.group.clone().unwrap_or_default(),
            victim,
        })
    }

    /// The process a thread id belongs to, as far as its charges told; itself when unknown.
    fn process_of_thread(&self, tid: u32) -> u32 {
        self.keys_of_thread(tid)
            .first()
            .and_then(|key| self.threads.get(key))
            .map_or(tid, |t| t.tgid)
    }

    /// An OOM kill: a new OOM, a further victim of the group kill the last one began, or
    /// nothing new (another thread of a process that kill already counted).
    pub(super) fn oom(&mut self, k: &OomKill) -> Option<Change> {
        match self.group_member(k) {
            Member::Yes(member) => Some(Change::OomGroupVictim(member)),
            Member::Again => None,
            Member::No => Some(Change::Oom(self.new_oom(k))),
        }
    }

    fn new_oom(&mut self, k: &OomKill) -> OomRow {
        let v = &k.victim;
        // Bring the windows up to the kill.
        self.tick(v.ts_ns.max(self.last_tick_ns));
        // The kernel's name for the invoker at the kill is its name: every pair of it (and the
        // process, when it is the main thread) takes it before anything is computed.
        self.rename_thread(v.invoker_tid, &v.invoker_comm);
        if v.invoker_tid == v.invoker_tgid {
            self.learn_leader_comm(v.invoker_tgid, &v.invoker_comm);
        }
        let (memcg_id, memcg_source) = self.oom_memcg(k);
        let usage = self.memcgs.get(&memcg_id).and_then(|m| m.usage);
        let invoker_comm = self.thread_comm(v.invoker_tid, v.invoker_tgid, &v.invoker_comm);
        let invoker_class = self.thread_class(&invoker_comm, v.invoker_tgid);
        let (victim_charged, victim_charged_anon) = self.charged_by(v.victim_pid);
        // The kernel stops its walk for memory.oom.group at the OOM's memcg; the program that
        // read the victim's memcgs walked to the root, so a group above the OOM's is none.
        let group_memcg_id = match k.group_memcg_id {
            0 => 0,
            g if memcg_id != 0
                && g != memcg_id
                && is_ancestor(&self.memcg_path(g), &self.memcg_path(memcg_id)) =>
            {
                0
            }
            g => g,
        };
        let victim_comm = if v.victim_comm.is_empty() {
            self.process_name(v.victim_pid, "?")
        } else {
            v.victim_comm.clone()
        };
        let victim_class = self.process_class(v.victim_pid);
        let post_mortem = (memcg_id != 0).then(|| {
            let baseline_guest = self.baseline_guest(v.victim_pid);
            let victim_guest = self.process_guest(v.victim_pid) + baseline_guest;
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
            memcg_source,
            invoker_memcg: (k.invoker_memcg_id != 0).then(|| self.memcg_path(k.invoker_memcg_id)),
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
            victim_charged_anon,
            post_mortem,
            group: (group_memcg_id != 0).then(|| self.memcg_path(group_memcg_id)),
            group_memcg_id,
            oom_start_ns: k.oom_start_ns,
            group_victims: Vec::new(),
        };
        self.ooms.push(row.clone());
        row
    }
}
