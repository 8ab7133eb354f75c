//! Everything the model is ever told, as values: the live collector feeds these and a capture
//! stores them, so a replay runs exactly the attribution the live run did.
use serde::{Deserialize, Serialize};

use super::{Change, Model, ProcessInfo};
use crate::{
    cgroupfs::UsageLimit,
    decode::{Charge, ChargeBeforeKinds, Event},
    kubevirt::budget,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ModelInput {
    /// KubeVirt constants (by profile name) and overhead ratio for the budget.
    Budget {
        profile: String,
        ratio: f64,
    },
    MemcgPath {
        id: u64,
        path: String,
    },
    Usage {
        id: u64,
        usage: UsageLimit,
    },
    Process {
        tgid: u32,
        info: ProcessInfo,
    },
    /// A decoded ring-buffer record.
    Event(Event),
    /// A sweep's reading as captures before shmem and socket buffers were counted stored it
    /// (read, never made).
    SweepBeforeKinds(ChargeBeforeKinds),
    /// The collector's clock at a sweep (CLOCK_MONOTONIC ns): the windows' samples.
    Tick(u64),
    /// An exited thread's final totals were read; the model lets it go.
    Forget(u32),
    /// The kernel side's loss counters (cumulative), read at a sweep.
    KernelStats {
        ring_drops: u64,
        rare_drops: u64,
        map_full: u64,
    },
    /// Runs of fentry programs the kernel skipped (cumulative). New inputs go at the end:
    /// captures store them by variant index.
    SkippedRuns(u64),
    /// Guest RAM a qemu had faulted in before its mapping was known (smaps Rss of the mapping
    /// at discovery, net of what was already counted as guest): moved from overhead to guest.
    GuestFound {
        tgid: u32,
        bytes: i64,
    },
    /// The memcg was removed from the cgroup filesystem: no longer shown as a live memcg.
    MemcgGone {
        id: u64,
    },
    /// A pod's namespace and name, from the container runtime's state on the node.
    PodNames {
        pod_uid: String,
        namespace: String,
        name: String,
    },
    /// A container's name, by the id its cgroup is named with, from the runtime's state.
    ContainerName {
        container_id: String,
        name: String,
    },
    /// A memcg's pressure counters, read with its usage.
    Pressure {
        id: u64,
        pressure: crate::cgroupfs::Pressure,
    },
    /// What kind of memory a memcg holds (its memory.stat), read with its usage.
    MemoryStat {
        id: u64,
        stat: crate::memory_stat::MemoryStat,
    },
    /// Page cache that ended processes of a class left charged to a memcg (a capture's facts;
    /// live, the model learns it from the exits).
    LeftBehind {
        id: u64,
        class: crate::kubevirt::ThreadClass,
        bytes: i64,
    },
    /// Ring-buffer records the collector could not decode (cumulative).
    DecodeErrors(u64),
    /// A sweep's reading of the kernel's charge map.
    Sweep(Charge),
}

impl ModelInput {
    /// CLOCK_MONOTONIC ns the input carries, if any.
    pub fn ts_ns(&self) -> Option<u64> {
        match self {
            ModelInput::Tick(t) => Some(*t),
            ModelInput::Sweep(c) => Some(c.ts_ns),
            ModelInput::SweepBeforeKinds(c) => Some(c.ts_ns),
            ModelInput::Event(e) => Some(e.ts_ns()),
            _ => None,
        }
    }
}

impl Model {
    /// Applies one input; returns what changed, for the views.
    pub fn feed(&mut self, input: &ModelInput) -> Option<Change> {
        match input {
            ModelInput::Budget { profile, ratio } => {
                let constants = budget::PROFILES
                    .iter()
                    .find(|p| p.name == profile)
                    .cloned()
                    .unwrap_or(budget::KUBEVIRT_CURRENT);
                self.set_budget(constants, *ratio);
                None
            }
            ModelInput::MemcgPath { id, path } => {
                self.set_memcg_path(*id, path.clone());
                None
            }
            ModelInput::Usage { id, usage } => {
                self.set_usage(*id, *usage);
                None
            }
            ModelInput::Process { tgid, info } => {
                self.set_process_info(*tgid, info.clone());
                None
            }
            ModelInput::Event(e) => self.apply(e),
            ModelInput::Sweep(c) => self.charge(c).map(Change::Charge),
            ModelInput::SweepBeforeKinds(c) => self.charge(&Charge::from(c)).map(Change::Charge),
            ModelInput::Tick(t) => {
                self.tick(*t);
                None
            }
            ModelInput::Forget(tid) => {
                self.forget_thread(*tid);
                None
            }
            ModelInput::KernelStats {
                ring_drops,
                rare_drops,
                map_full,
            } => {
                self.counters.ring_drops = *ring_drops;
                self.counters.rare_drops = *rare_drops;
                self.counters.map_full = *map_full;
                None
            }
            ModelInput::SkippedRuns(n) => {
                self.counters.skipped_runs = *n;
                None
            }
            ModelInput::DecodeErrors(n) => {
                self.counters.decode_errors = *n;
                None
            }
            ModelInput::GuestFound { tgid, bytes } => {
                self.set_guest_found(*tgid, *bytes);
                None
            }
            ModelInput::PodNames {
                pod_uid,
                namespace,
                name,
            } => {
                self.pod_names
                    .insert(pod_uid.clone(), (namespace.clone(), name.clone()));
                None
            }
            ModelInput::ContainerName { container_id, name } => {
                self.container_names
                    .insert(container_id.clone(), name.clone());
                None
            }
            ModelInput::Pressure { id, pressure } => {
                self.set_pressure(*id, *pressure);
                None
            }
            ModelInput::MemoryStat { id, stat } => {
                self.memcgs.entry(*id).or_default().stat = Some(*stat);
                None
            }
            ModelInput::LeftBehind { id, class, bytes } => {
                self.set_left_behind(*id, *class, *bytes);
                None
            }
            ModelInput::MemcgGone { id } => {
                if let Some(m) = self.memcgs.get_mut(id) {
                    m.gone = true;
                }
                None
            }
        }
    }

    /// The facts a capture file must start with to be read on its own (after rotation):
    /// budget, memcg paths and usage, process infos.
    pub fn facts(&self) -> Vec<ModelInput> {
        let mut out = vec![ModelInput::Budget {
            profile: self.budget_constants.name.to_string(),
            ratio: self.budget_ratio,
        }];
        // In key order: the same model writes the same bytes.
        let mut memcgs: Vec<_> = self.memcgs.iter().collect();
        memcgs.sort_unstable_by_key(|(id, _)| **id);
        for (id, m) in memcgs {
            if !m.path.is_empty() {
                out.push(ModelInput::MemcgPath {
                    id: *id,
                    path: m.path.clone(),
                });
            }
            if let Some(u) = m.usage {
                out.push(ModelInput::Usage { id: *id, usage: u });
            }
            if let Some(p) = m.pressure {
                out.push(ModelInput::Pressure {
                    id: *id,
                    pressure: p,
                });
            }
            if let Some(stat) = m.stat {
                out.push(ModelInput::MemoryStat { id: *id, stat });
            }
            for (class, bytes) in &m.left_behind {
                out.push(ModelInput::LeftBehind {
                    id: *id,
                    class: *class,
                    bytes: *bytes,
                });
            }
            if m.gone {
                out.push(ModelInput::MemcgGone { id: *id });
            }
        }
        let mut pods: Vec<_> = self.pod_names.iter().collect();
        pods.sort_unstable();
        for (uid, (namespace, name)) in pods {
            out.push(ModelInput::PodNames {
                pod_uid: uid.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
            });
        }
        let mut containers: Vec<_> = self.container_names.iter().collect();
        containers.sort_unstable();
        for (id, name) in containers {
            out.push(ModelInput::ContainerName {
                container_id: id.clone(),
                name: name.clone(),
            });
        }
        let mut processes: Vec<_> = self.processes.iter().collect();
        processes.sort_unstable_by_key(|(tgid, _)| **tgid);
        for (tgid, p) in processes {
            if let Some(info) = &p.info {
                out.push(ModelInput::Process {
                    tgid: *tgid,
                    info: info.clone(),
                });
            }
            if p.guest_found > 0 {
                out.push(ModelInput::GuestFound {
                    tgid: *tgid,
                    bytes: p.guest_found,
                });
            }
        }
        out
    }
}
