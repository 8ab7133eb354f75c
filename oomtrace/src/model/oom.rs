//! An OOM kill as the model sees it: which memcg's limit was hit, who invoked the killer, what
//! the victim held, and the post-mortem of what grew before.
use super::{Model, OomRow, classify_thread, is_ancestor};
use crate::decode::OomVictim;

impl Model {
    /// The memcg whose limit was hit: among the invoker's memcg and its known ancestors, the
    /// deepest with a limit whose peak reached it; else the deepest with a limit.
    pub(super) fn oom_memcg(&self, invoker_tid: u32) -> Option<u64> {
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

    /// A thread's name and class as the model knows them, else from the event's comm.
    pub(super) fn thread_name_class(
        &self,
        tid: u32,
        tgid: u32,
        comm: &str,
    ) -> (String, crate::kubevirt::ThreadClass) {
        let known = self
            .threads
            .iter()
            .find(|((t, _), _)| *t == tid)
            .map(|(_, s)| (s.comm.clone(), s.class()));
        known.unwrap_or_else(|| {
            let info = self
                .processes
                .get(&tgid)
                .and_then(|p| p.info.clone())
                .unwrap_or_default();
            (comm.to_string(), classify_thread(comm, &info))
        })
    }

    pub(super) fn oom(&mut self, v: &OomVictim) -> OomRow {
        // Bring the windows up to the kill.
        self.tick(v.ts_ns.max(self.last_tick_ns));
        let memcg_id = self.oom_memcg(v.invoker_tid).unwrap_or(0);
        let usage = self.memcgs.get(&memcg_id).and_then(|m| m.usage);
        let (invoker_comm, invoker_class) =
            self.thread_name_class(v.invoker_tid, v.invoker_tgid, &v.invoker_comm);
        let victim_threads = || self.threads.values().filter(|t| t.tgid == v.victim_pid);
        let victim_charged = victim_threads().map(|t| t.totals.total()).sum::<i64>()
            + self
                .processes
                .get(&v.victim_pid)
                .map_or(0, |p| p.retired.total());
        let victim_charged_anon = victim_threads().map(|t| t.totals.anon).sum::<i64>()
            + self
                .processes
                .get(&v.victim_pid)
                .map_or(0, |p| p.retired.anon);
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
        };
        self.ooms.push(row.clone());
        row
    }
}
