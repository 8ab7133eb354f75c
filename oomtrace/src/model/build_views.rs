//! The model's views, built from its state: per memcg, process and thread, the OOM post-mortem,
//! the periodic snapshot and the final summary.
use std::collections::{BTreeMap, BTreeSet};

use super::{
    ChargeTotals, Model, OomRow, ProcessSummary, Summary, ThreadState, ThreadSummary, add,
    classify_thread, is_ancestor,
    views::{
        self, ClassVec, MemcgView, PostMortem, ProcessView, Snapshot, ThreadView, WINDOW_LONG_NS,
        WINDOW_SHORT_NS,
    },
};
use crate::kubevirt::{ThreadClass, budget, cmdline::VmFacts};

impl Model {
    /// The processes with a thread charging in or below `memcg_id`, in tgid order.
    fn processes_under(&self, memcg_id: u64) -> BTreeSet<u32> {
        self.threads
            .iter()
            .filter(|((_, m), _)| self.under(memcg_id, *m))
            .map(|(_, t)| t.tgid)
            .collect()
    }

    /// VM facts of the processes charging in or below `memcg_id` (qemu's -m, -smp, -name):
    /// qemu's own first, then the others', in tgid order (the first to say a fact wins).
    pub(super) fn vm_facts(&self, memcg_id: u64) -> VmFacts {
        let mut infos: Vec<(bool, u32, &super::ProcessInfo)> = self
            .processes_under(memcg_id)
            .into_iter()
            .filter_map(|tgid| {
                let info = self.processes.get(&tgid)?.info.as_ref()?;
                Some((!classify_thread(&info.comm, info).is_qemu(), tgid, info))
            })
            .collect();
        infos.sort_unstable_by_key(|(not_qemu, tgid, _)| (*not_qemu, *tgid));
        let mut vm = VmFacts::default();
        for (_, _, info) in infos {
            vm.merge(info.vm.clone());
        }
        vm
    }

    /// Whether the VM budget belongs to this memcg: a pod's own memcg or one of its containers'
    /// (KubeVirt's compute container), or, outside Kubernetes, the deepest memcg with a limit
    /// that holds a qemu. Never an ancestor of the pod (kubepods, a QoS slice, the root, the
    /// host's own memcgs), whatever runs below it.
    fn holds_vm_budget(&self, memcg_id: u64) -> bool {
        use crate::kubevirt::identity::Level;
        let Some(m) = self.memcgs.get(&memcg_id) else {
            return false;
        };
        if let Some(id) = &m.identity {
            return matches!(id.level, Level::Pod | Level::Container);
        }
        let limited: Vec<(&str, u64)> = self
            .memcgs
            .iter()
            .filter(|(_, c)| c.usage.is_some_and(|u| u.limit.is_some()) && !c.path.is_empty())
            .map(|(id, c)| (c.path.as_str(), *id))
            .collect();
        self.processes_under(memcg_id).into_iter().any(|tgid| {
            let Some(info) = self.processes.get(&tgid).and_then(|p| p.info.as_ref()) else {
                return false;
            };
            if !classify_thread(&info.comm, info).is_qemu() {
                return false;
            }
            let Some(at) = info.memcg.as_deref() else {
                return false;
            };
            // The deepest limited memcg holding this qemu (ties: the lower id).
            limited
                .iter()
                .filter(|(path, _)| is_ancestor(path, at))
                .max_by_key(|(path, id)| (path.len(), std::cmp::Reverse(*id)))
                .is_some_and(|(_, id)| *id == memcg_id)
        })
    }

    /// Guest RAM a qemu process already held when oomtrace started (capped at the guest size).
    pub(super) fn baseline_guest(&self, tgid: u32) -> i64 {
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
    pub(super) fn held_by_class(&self, memcg_id: u64, now: &ClassVec) -> ClassVec {
        let mut held = *now;
        let path = &self
            .memcgs
            .get(&memcg_id)
            .map(|m| m.path.clone())
            .unwrap_or_default();
        for tgid in self.processes_under(memcg_id) {
            // Only a process that lives in this memcg holds its resident memory here; others
            // (the creator of a cgroup, a reader of its files) only charged kernel objects.
            if let Some(info) = self.processes.get(&tgid).and_then(|p| p.info.as_ref())
                && let Some((anon, other)) = info.rss_at_start
                && info.memcg.as_deref().is_some_and(|m| is_ancestor(path, m))
            {
                let class = classify_thread(&info.comm, info);
                let total = i64::try_from(anon + other).unwrap_or(i64::MAX);
                held.add(class, total, self.baseline_guest(tgid), 0);
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
            &m.class_kinds,
            self.kinds_told(),
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
        let pressure = m.pressure.map(|p| {
            let (t0, then) = m
                .pressure_history
                .at(now_ns, WINDOW_LONG_NS)
                .unwrap_or((now_ns, &p));
            let window_us = now_ns.saturating_sub(t0) / 1000;
            let share = |now: Option<u64>, then: Option<u64>| {
                let d = now?.checked_sub(then?)?;
                (window_us >= 1_000_000).then(|| (d as f64 / window_us as f64).min(1.0))
            };
            views::PressureView {
                limit_hits: p.limit_hits,
                limit_hits_60s: p.limit_hits.saturating_sub(then.limit_hits),
                oom_kills: p.oom_kills,
                stalled_some_60s: share(p.some_us, then.some_us),
                stalled_full_60s: share(p.full_us, then.full_us),
                window_s: window_us as f64 / 1e6,
            }
        });
        let kinds = m
            .stat
            .as_ref()
            .map(|s| super::kinds::kinds_view(s, &m.stat_history, now_ns));
        let vm = self.vm_facts(memcg_id);
        let guest: i64 = now.guest.iter().sum();
        let total: i64 = now.total.iter().sum();
        let (budget, budget_profile) = match vm.guest_memory {
            Some(g) if self.holds_vm_budget(memcg_id) => {
                let shape = budget::VmShape {
                    guest_memory: g,
                    vcpus: vm.vcpus.unwrap_or(1),
                    graphics: true,
                };
                let b = budget::compute(&shape, &self.budget_constants, self.budget_ratio);
                let held = self.held_by_class(memcg_id, &now);
                let shmem_told = !self.charges_without_shmem;
                let clean = m
                    .stat
                    .as_ref()
                    .map_or(0.0, |s| super::kinds::clean_share(s, shmem_told));
                (
                    views::budget_views(&b, &held, clean),
                    Some(self.budget_constants.name),
                )
            }
            _ => (Vec::new(), None),
        };
        Some(MemcgView {
            memcg: self.memcg_path(memcg_id),
            memcg_id,
            pod_name: m
                .identity
                .as_ref()
                .and_then(|p| self.pod_names.get(p.pod_uid.as_deref()?))
                .map(|(ns, name)| format!("{ns}/{name}")),
            container_name: self.container_name(memcg_id),
            pod: m.identity.clone(),
            vm: vm.display_name(),
            usage: m.usage.map(|u| u.usage),
            limit,
            headroom,
            pressure,
            kinds,
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
    pub(super) fn thread_views_all(&self, memcg_id: Option<u64>, now_ns: u64) -> Vec<ThreadView> {
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
                    container: self.container_name(*m),
                    now: total,
                    peak: t.peak,
                    anon: t.totals.anon,
                    guest,
                    page_cache: t.totals.file - t.totals.shmem,
                    shmem: self.shmem(&t.totals),
                    sock: self.sock(&t.totals),
                    kernel: t.totals.kernel,
                    last_10s: total - ago10.0,
                    last_60s: total - ago60.0,
                    overhead_10s: (total - guest) - (ago10.0 - ago10.1),
                    overhead_60s: (total - guest) - (ago60.0 - ago60.1),
                }
            })
            .collect();
        // Ties broken down to the memcg: a thread has a pair per memcg it charged.
        v.sort_by(|a, b| {
            (b.last_60s, b.now, a.tid, &a.memcg).cmp(&(a.last_60s, a.now, b.tid, &b.memcg))
        });
        v
    }

    pub(super) fn without_noise(mut threads: Vec<ThreadView>) -> Vec<ThreadView> {
        threads.retain(|t| !views::is_noise(&[t.now, t.peak, t.last_60s]));
        threads
    }

    pub(super) fn process_views(&self, threads: &[ThreadView]) -> Vec<ProcessView> {
        let mut by_pid: BTreeMap<u32, ProcessView> = BTreeMap::new();
        for t in threads {
            let p = by_pid.entry(t.pid).or_insert_with(|| ProcessView {
                pid: t.pid,
                process: t.process.clone(),
                class: self.process_class(t.pid),
                now: 0,
                peak: 0,
                anon: 0,
                guest: 0,
                page_cache: 0,
                shmem: self.kinds_told().shmem(0),
                sock: self.kinds_told().sock(0),
                kernel: 0,
                last_10s: 0,
                last_60s: 0,
                overhead_10s: 0,
                overhead_60s: 0,
                guest_ram_mapped: self
                    .processes
                    .get(&t.pid)
                    .and_then(|p| p.info.as_ref())
                    .is_some_and(|i| i.guest_ram_watched),
            });
            p.now += t.now;
            p.anon += t.anon;
            p.guest += t.guest;
            p.page_cache += t.page_cache;
            p.shmem = p.shmem.zip(t.shmem).map(|(a, b)| a + b);
            p.sock = p.sock.zip(t.sock).map(|(a, b)| a + b);
            p.kernel += t.kernel;
            p.last_10s += t.last_10s;
            p.last_60s += t.last_60s;
            p.overhead_10s += t.overhead_10s;
            p.overhead_60s += t.overhead_60s;
        }
        let mut v: Vec<ProcessView> = by_pid
            .into_values()
            .map(|mut p| {
                if let Some(s) = self.processes.get(&p.pid) {
                    let r = &s.retired;
                    p.now += r.total();
                    p.anon += r.anon;
                    p.page_cache += r.file - r.shmem;
                    p.shmem = p.shmem.map(|v| v + r.shmem);
                    p.sock = p.sock.map(|v| v + r.sock);
                    p.kernel += r.kernel;
                    p.peak = s.peak.max(p.now);
                }
                p
            })
            .collect();
        v.retain(|p| !views::is_noise(&[p.now, p.peak, p.last_60s]));
        v.sort_by_key(|p| (std::cmp::Reverse(p.now), p.pid));
        v
    }

    pub(super) fn post_mortem(
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
                pod_name: None,
                container_name: None,
                vm: None,
                usage: None,
                limit: None,
                headroom: None,
                pressure: None,
                kinds: None,
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

    /// Every charged memcg that still exists, limited ones first, least headroom first (no thread views: cheap
    /// enough for the agent's metrics at every tick).
    pub fn memcg_views(&self, now_ns: u64) -> Vec<MemcgView> {
        let mut memcgs: Vec<MemcgView> = self
            .memcgs
            .iter()
            .filter(|(_, m)| !m.gone && m.classes.latest().is_some_and(|v| !v.is_zero()))
            .filter_map(|(id, _)| self.memcg_view(*id, now_ns))
            .collect();
        memcgs.sort_by_key(|m| (m.headroom.is_none(), m.headroom, m.memcg.clone()));
        memcgs
    }

    /// One memcg's view with the processes and threads charging it and below (`top`'s pod
    /// detail): `snapshot`, scoped.
    pub fn snapshot_of(&self, memcg_id: u64, now_ns: u64) -> Option<Snapshot> {
        let memcg = self.memcg_view(memcg_id, now_ns)?;
        let threads = self.thread_views_all(Some(memcg_id), now_ns);
        let processes = self.process_views(&threads);
        Some(Snapshot {
            kind: "snapshot",
            ts_ns: now_ns,
            memcgs: vec![memcg],
            processes,
            threads: Self::without_noise(threads),
        })
    }

    /// A memcg's usage over the last minute (one sample a second at most), oldest first.
    pub fn usage_samples(&self, memcg_id: u64) -> Vec<u64> {
        self.memcgs
            .get(&memcg_id)
            .map(|m| m.usage_history.samples().map(|(_, u)| *u).collect())
            .unwrap_or_default()
    }

    /// The OOM kills seen so far, oldest first.
    pub fn oom_rows(&self) -> &[OomRow] {
        &self.ooms
    }

    /// The state of every charged memcg (limited ones first, least headroom first) and the
    /// biggest movers, for `tail --by`.
    pub fn snapshot(&self, now_ns: u64) -> Snapshot {
        let memcgs = self.memcg_views(now_ns);
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
                shmem: self.shmem(&t.totals),
                sock: self.sock(&t.totals),
                kernel: t.totals.kernel,
                guest: t.guest(),
                exited: t.exited,
            });
        }
        threads.sort_by(|a, b| (b.total, a.tid, &a.memcg).cmp(&(a.total, b.tid, &b.memcg)));
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
                shmem: self.shmem(&t),
                sock: self.sock(&t),
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
            capture_error: None,
        }
    }

    pub(super) fn process_guest(&self, tgid: u32) -> i64 {
        self.threads
            .values()
            .filter(|t| t.tgid == tgid)
            .map(ThreadState::guest)
            .sum::<i64>()
            + self.processes.get(&tgid).map_or(0, |p| p.retired_guest)
    }
}
