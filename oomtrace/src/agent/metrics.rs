//! The agent's Prometheus metrics, with the maintained prometheus-client crate: per pod memcg
//! (usage, limit, guest RAM, overhead, bytes by thread class, time to the limit), OOM kills,
//! and the agent's own health. Labels stay bounded: pod, VM, class and hook names, never a
//! pid, tid or comm; the series of pods that are gone are removed at the next update.
use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use super::http::Shared;
use crate::{
    collector::TickInfo,
    kubevirt::identity::Level,
    model::{KillSignalRow, Model, OomRow, views::MemcgView},
};

/// Metrics are rebuilt from the model this often (views cost a walk of every thread).
const UPDATE_EVERY_NS: u64 = 2_000_000_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    namespace: String,
    pod: String,
    vm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    namespace: String,
    pod: String,
    vm: String,
    class: String,
}

/// A kind of memory of a pod memcg (memory.stat): anon, page_cache_dirty, sock, ...
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemoryKindLabels {
    namespace: String,
    pod: String,
    vm: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KillLabels {
    namespace: String,
    pod: String,
    vm: String,
    invoker_class: String,
    victim_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    namespace: String,
    pod: String,
    vm: String,
    signal: String,
    sender_kind: String,
    target_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: String,
    tier: String,
    target: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    usage: Family<PodLabels, Gauge>,
    limit: Family<PodLabels, Gauge>,
    guest: Family<PodLabels, Gauge>,
    overhead: Family<PodLabels, Gauge>,
    class_bytes: Family<ClassLabels, Gauge>,
    kind_bytes: Family<MemoryKindLabels, Gauge>,
    time_to_limit: Family<PodLabels, FloatGauge>,
    kills: Family<KillLabels, Counter>,
    kill_signals: Family<SignalLabels, Counter>,
    events: Counter,
    dropped: Family<KindLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    cpu: Counter<f64, AtomicU64>,
    rss: Gauge,
    hooks: Family<HookLabels, Gauge>,
    recording: Gauge,
    /// Cumulative counts already added to the counters.
    seen: Seen,
    last_update_ns: u64,
}

#[derive(Default)]
struct Seen {
    events: u64,
    ring: u64,
    rare: u64,
    map_full: u64,
    decode: u64,
    skipped: u64,
    unrecorded: u64,
    cpu_s: f64,
}

/// The pod labels of a memcg view: the pod's namespace and name from the runtime's state (else
/// the VM's namespace and the pod UID), the VM's name from the command lines. None for memcgs that are not a pod.
fn pod_labels(v: &MemcgView) -> Option<PodLabels> {
    let pod = v.pod.as_ref()?;
    if pod.level != Level::Pod {
        return None;
    }
    let (vm_namespace, vm) = match v.vm.as_deref().map(|s| s.split_once('/')) {
        Some(Some((ns, name))) => (ns.to_string(), name.to_string()),
        _ => (String::new(), v.vm.clone().unwrap_or_default()),
    };
    // The runtime's names when it told them; else the VM's namespace and the pod UID.
    let (namespace, name) = match v.pod_name.as_deref().and_then(|p| p.split_once('/')) {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (vm_namespace, pod.pod_uid.clone().unwrap_or_default()),
    };
    Some(PodLabels {
        namespace,
        pod: name,
        vm,
    })
}

fn clamp(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

impl Metrics {
    pub fn new(shared: &Arc<Shared>) -> Self {
        let m = Self {
            usage: Family::default(),
            limit: Family::default(),
            guest: Family::default(),
            overhead: Family::default(),
            class_bytes: Family::default(),
            kind_bytes: Family::default(),
            time_to_limit: Family::default(),
            kills: Family::default(),
            kill_signals: Family::default(),
            events: Counter::default(),
            dropped: Family::default(),
            errors: Family::default(),
            cpu: Counter::default(),
            rss: Gauge::default(),
            hooks: Family::default(),
            recording: Gauge::default(),
            seen: Seen::default(),
            last_update_ns: 0,
        };
        let mut r = Registry::with_prefix("oomtrace");
        let bytes = |r: &mut Registry, name: &str, help: &str, f: &Family<PodLabels, Gauge>| {
            r.register_with_unit(name, help, Unit::Bytes, f.clone());
        };
        bytes(
            &mut r,
            "memcg_usage",
            "Memory usage of a pod's memcg",
            &m.usage,
        );
        bytes(
            &mut r,
            "memcg_limit",
            "Memory limit of a pod's memcg",
            &m.limit,
        );
        bytes(
            &mut r,
            "memcg_guest",
            "Guest RAM faulted in by the pod's VM, charged since oomtrace started",
            &m.guest,
        );
        bytes(
            &mut r,
            "memcg_overhead",
            "Bytes charged to the pod besides guest RAM since oomtrace started",
            &m.overhead,
        );
        r.register_with_unit(
            "memcg_class",
            "Bytes charged to the pod by thread class since oomtrace started",
            Unit::Bytes,
            m.class_bytes.clone(),
        );
        r.register_with_unit(
            "memcg_kind",
            "Bytes the pod's memcg holds by kind of memory, from its memory.stat (a kind the kernel does not count is absent)",
            Unit::Bytes,
            m.kind_bytes.clone(),
        );
        r.register_with_unit(
            "memcg_time_to_limit",
            "Seconds until the pod reaches its limit at the growth of the last 10 s",
            Unit::Seconds,
            m.time_to_limit.clone(),
        );
        r.register(
            "oom_kills",
            "OOM kills by pod, VM, invoker class and victim class",
            m.kills.clone(),
        );
        r.register(
            "kill_signals",
            "SIGKILL / SIGTERM sent to watched processes by other processes (not the kernel's OOM killer), by pod, VM, signal, sender kind and target class",
            m.kill_signals.clone(),
        );
        r.register("events", "Kernel events the agent read", m.events.clone());
        r.register(
            "dropped_events",
            "Events lost, by kind (ring, rare, map_full, decode, skipped_runs; unrecorded: traced but not written while the flight recorder was stopped)",
            m.dropped.clone(),
        );
        r.register(
            "errors",
            "Agent errors by kind (kill_dir: a kill could not be kept)",
            m.errors.clone(),
        );
        r.register_with_unit(
            "cpu",
            "CPU time the agent used",
            Unit::Seconds,
            m.cpu.clone(),
        );
        r.register_with_unit(
            "resident_memory",
            "Resident memory of the agent",
            Unit::Bytes,
            m.rss.clone(),
        );
        r.register(
            "hook_info",
            "The tier serving each hook (1 per hook; tier off: not served)",
            m.hooks.clone(),
        );
        r.register(
            "recording",
            "1 while the flight recorder writes, 0 once it stopped (see the agent's log)",
            m.recording.clone(),
        );
        shared.set_registry(r);
        m
    }

    pub fn count_kill(&mut self, row: &OomRow) {
        let pm = row.post_mortem.as_deref();
        let pod = pm.and_then(|p| pod_labels(&p.memcg)).unwrap_or(PodLabels {
            namespace: String::new(),
            pod: String::new(),
            vm: String::new(),
        });
        self.kills
            .get_or_create(&KillLabels {
                namespace: pod.namespace,
                pod: pod.pod,
                vm: pod.vm,
                invoker_class: row.invoker_class.name().to_string(),
                victim_class: row.victim_class.name().to_string(),
            })
            .inc();
    }

    pub fn count_kill_signal(&mut self, row: &KillSignalRow, pod: Option<&MemcgView>) {
        let pod = pod.and_then(pod_labels).unwrap_or(PodLabels {
            namespace: String::new(),
            pod: String::new(),
            vm: String::new(),
        });
        self.kill_signals
            .get_or_create(&SignalLabels {
                namespace: pod.namespace,
                pod: pod.pod,
                vm: pod.vm,
                signal: row.signal.to_string(),
                sender_kind: row.sender_kind.to_string(),
                target_class: row.class.name().to_string(),
            })
            .inc();
    }

    pub fn kill_dir_failed(&mut self) {
        self.errors
            .get_or_create(&KindLabels {
                kind: "kill_dir".into(),
            })
            .inc();
    }

    pub fn update(&mut self, model: &Model, at: &TickInfo) {
        if at.now_ns.saturating_sub(self.last_update_ns) < UPDATE_EVERY_NS
            && self.last_update_ns != 0
        {
            return;
        }
        self.last_update_ns = at.now_ns;
        for f in [&self.usage, &self.limit, &self.guest, &self.overhead] {
            f.clear();
        }
        self.class_bytes.clear();
        self.kind_bytes.clear();
        self.time_to_limit.clear();
        for v in model.memcg_views(at.now_ns) {
            let Some(l) = pod_labels(&v) else {
                continue;
            };
            if let Some(u) = v.usage {
                self.usage.get_or_create(&l).set(clamp(u));
            }
            if let Some(lim) = v.limit {
                self.limit.get_or_create(&l).set(clamp(lim));
            }
            self.guest.get_or_create(&l).set(v.guest);
            self.overhead.get_or_create(&l).set(v.overhead);
            if let Some(t) = v.time_to_limit_s {
                self.time_to_limit.get_or_create(&l).set(t);
            }
            for c in &v.classes {
                self.class_bytes
                    .get_or_create(&ClassLabels {
                        namespace: l.namespace.clone(),
                        pod: l.pod.clone(),
                        vm: l.vm.clone(),
                        class: c.class.name().to_string(),
                    })
                    .set(c.now);
            }
            for k in v.kinds.iter().flat_map(|k| &k.kinds) {
                if let Some(b) = k.bytes {
                    self.kind_bytes
                        .get_or_create(&MemoryKindLabels {
                            namespace: l.namespace.clone(),
                            pod: l.pod.clone(),
                            vm: l.vm.clone(),
                            kind: k.kind.to_string(),
                        })
                        .set(clamp(b));
                }
            }
        }
        let c = &model.counters;
        let s = &mut self.seen;
        self.events.inc_by(c.events.saturating_sub(s.events));
        s.events = s.events.max(c.events);
        for (kind, now, seen) in [
            ("ring", c.ring_drops, &mut s.ring),
            ("rare", c.rare_drops, &mut s.rare),
            ("map_full", c.map_full, &mut s.map_full),
            ("decode", c.decode_errors, &mut s.decode),
            ("skipped_runs", c.skipped_runs, &mut s.skipped),
            // Fed while the flight recorder was stopped: traced, in the metrics, not on disk.
            ("unrecorded", at.unrecorded, &mut s.unrecorded),
        ] {
            self.dropped
                .get_or_create(&KindLabels { kind: kind.into() })
                .inc_by(now.saturating_sub(*seen));
            *seen = (*seen).max(now);
        }
        let (cpu_s, rss) = crate::procfs::self_cost();
        if cpu_s > s.cpu_s {
            self.cpu.inc_by(cpu_s - s.cpu_s);
            s.cpu_s = cpu_s;
        }
        self.rss.set(rss);
        self.hooks.clear();
        for h in at.hooks {
            self.hooks
                .get_or_create(&HookLabels {
                    hook: h.hook.to_string(),
                    tier: h.tier.to_string(),
                    target: h.target.clone(),
                })
                .set(1);
        }
        self.recording.set(i64::from(at.capture_error.is_none()));
    }
}
