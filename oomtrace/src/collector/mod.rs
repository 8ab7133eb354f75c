//! The live collector: loads the probes, keeps the memcg filter current, drains the ring buffer,
//! sweeps the charge map for totals not yet sent, and feeds everything to the model.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use oomtrace_common::{ChargeKey, ChargeValue, GuestRanges};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

mod housekeeping;
mod processes;
mod recording;

use crate::{
    bpf::{self, HookChoice},
    capture,
    cgroupfs::{self, MemoryController},
    decode::{self, Charge, Event},
    kernel_btf::{KernelBtf, VMLINUX_BTF},
    kubevirt::budget,
    model::input::ModelInput,
    model::{Change, KillSignalRow, Model, OomRow, Summary},
    output::{self, Clock},
    printer::Printer,
    procfs,
    render::By,
    tracefs,
};

/// What to watch.
#[derive(Clone, Debug)]
pub enum Target {
    /// Every memory cgroup.
    All,
    /// A memory cgroup and everything below it (path as the kernel prints it, or full).
    Cgroup(String),
    /// One process: its memory cgroup is watched, and only its rows are shown.
    Pid(u32),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub target: Target,
    pub json: bool,
    /// Print charge rows (off: only OOM, reclaim, exits and the summary).
    pub charges: bool,
    pub duration: Option<Duration>,
    /// Stop this long after the first OOM kill (the demo).
    pub stop_after_oom: Option<Duration>,
    pub flush_bytes: i64,
    /// Print a per-class/process/thread summary every `every`.
    pub by: Option<By>,
    pub every: Duration,
    /// KubeVirt overhead constants and ratio for the budget comparison.
    pub budget: (budget::Constants, f64),
    /// Write a capture of everything the model is fed.
    pub record: Option<RecordTo>,
    /// Show a one-line status on stderr, updated in place (record).
    pub status_line: bool,
    /// Use only this tier where a hook has it (tests, and kernels where one misbehaves).
    pub tier: Option<bpf::Tier>,
    /// Where container runtimes keep their bundles (pod names).
    pub runtime_roots: Vec<PathBuf>,
    /// Once attached, keep only the capabilities the running collector needs (the
    /// long-running commands; not the demo, which still makes cgroups and runs workloads).
    pub least_privilege: bool,
}

#[derive(Clone, Debug)]
pub struct RecordTo {
    pub path: PathBuf,
    pub max_size: Option<u64>,
    pub keep: usize,
    /// After a write error, try again in a new file (the agent) rather than end with the error.
    pub resume: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            target: Target::All,
            json: false,
            charges: true,
            duration: None,
            stop_after_oom: None,
            flush_bytes: 256 * 1024,
            by: None,
            every: Duration::from_secs(5),
            budget: (budget::KUBEVIRT_CURRENT, 1.0),
            record: None,
            status_line: false,
            tier: None,
            runtime_roots: crate::runtime_state::DEFAULT_ROOTS
                .iter()
                .map(PathBuf::from)
                .collect(),
            least_privilege: false,
        }
    }
}

/// Threads that exited are read one last time after this delay (uncharges of the exit path land
/// after the exit tracepoint on some kernels), then forgotten.
const EXIT_GRACE: Duration = Duration::from_millis(1500);
const TICK: Duration = Duration::from_millis(500);
/// A group kill is handed to observers once no victim came for this long (ns).
const GROUP_SETTLE_NS: u64 = 300_000_000;
/// How often the whole memcg tree is walked (new pods are counted provisionally meanwhile).
const FULL_RESCAN: Duration = Duration::from_secs(5);
/// A limited memcg's memory.stat is read at most this often (it is the costliest of its files).
const STAT_EVERY: Duration = Duration::from_secs(1);
/// Verdicts "not ours" kept for the kernel filter (its map holds 64 Ki memcgs in all).
const MAX_IGNORED_MEMCGS: usize = 32768;
/// How often freed capacity is given back after threads were retired.
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// How often the threads oomtrace holds are checked against /proc.
const GC_EVERY: Duration = Duration::from_secs(30);

/// Checks that must pass before anything is loaded; each failure is one clear line.
pub fn preflight(cfg: &Config) -> Result<(MemoryController, Option<PathBuf>, Option<u32>)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "oomtrace needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN) to load eBPF programs; run it with sudo"
        );
    }
    let ctl = MemoryController::detect()?;
    let (root, pid) = match &cfg.target {
        Target::All => (None, None),
        Target::Cgroup(p) => (Some(ctl.resolve(p)?), None),
        Target::Pid(pid) => {
            if !PathBuf::from(format!("/proc/{pid}")).exists() {
                bail!("process {pid} does not exist");
            }
            (Some(ctl.of_pid(*pid)?), Some(*pid))
        }
    };
    Ok((ctl, root, pid))
}

struct Live {
    ctl: MemoryController,
    root: PathBuf,
    filter: bool,
    charges: BpfHashMap<MapData, ChargeKey, ChargeValue>,
    /// Batched reads of `charges` (None: the kernel refused them; then key by key).
    charge_batch: Option<bpf::batch::BatchReader<ChargeKey, ChargeValue>>,
    /// The last read of the charge map (its allocation is kept between sweeps).
    charge_entries: Vec<(ChargeKey, ChargeValue)>,
    watched: BpfHashMap<MapData, u64, u8>,
    stats: PerCpuArray<MapData, u64>,
    guest_ram: BpfHashMap<MapData, u32, GuestRanges>,
    guest_seen: Array<MapData, u32>,
    /// qemu processes whose guest RAM mapping was not found yet (qemu maps it while starting).
    qemu_pending: HashSet<u32>,
    /// qemu processes whose guest RAM mapping the kernel programs know.
    guest_registered: HashSet<u32>,
    /// Guest RAM mappings found and not registered yet (`register_guest_ram`).
    guest_ram_found: Vec<(u32, Vec<(u64, u64)>)>,
    /// Memcg id → its directory, and back.
    known_memcgs: HashMap<u64, PathBuf>,
    memcg_ids: HashMap<PathBuf, u64>,
    /// Memcgs charged since the last tick: their usage (and their ancestors') is read again.
    dirty_memcgs: HashSet<u64>,
    /// When each limited memcg's memory.stat was last read (at most once a second each).
    stat_read_at: HashMap<u64, Instant>,
    last_rescan: Instant,
    runtime: crate::runtime_state::RuntimeState,
    /// Memcgs outside the target, told to the kernel as ignored.
    ignored_memcgs: HashSet<u64>,
    pending_exits: Vec<(Instant, u32)>,
    model: Model,
    clock: Clock,
    cfg: Config,
    probes: bpf::Probes,
    recording: Option<recording::Recording>,
    last_trim: Instant,
    /// Rare-event drops already answered by a /proc scan for vanished threads.
    rare_drops_seen: u64,
    last_gc: Instant,
    printer: Printer,
    /// OOM and kill-signal rows not yet handed to the observer.
    kills: Vec<Change>,
}

impl Live {
    /// Brings the memcg filter and the id → path table up to date with the cgroup filesystem.
    fn rescan(&mut self) {
        self.last_rescan = Instant::now();
        for (id, b) in self.runtime.scan_new() {
            self.feed(ModelInput::PodNames {
                pod_uid: b.pod.pod_uid,
                namespace: b.pod.namespace,
                name: b.pod.name,
            });
            if let Some(name) = b.container_name {
                self.feed(ModelInput::ContainerName {
                    container_id: id,
                    name,
                });
            }
        }
        self.dirty_memcgs.clear();
        let now = cgroupfs::walk(&self.root);
        for (id, path) in &now {
            if self.known_memcgs.insert(*id, path.clone()).is_none() {
                self.memcg_ids.insert(path.clone(), *id);
                if self.filter {
                    let _ = self.watched.insert(id, &1u8, 0);
                }
                let path = self.ctl.display_path(path);
                self.feed(ModelInput::MemcgPath { id: *id, path });
            }
            self.read_usage(*id, path, true);
        }
        let gone: Vec<u64> = self
            .known_memcgs
            .keys()
            .filter(|id| !now.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(path) = self.known_memcgs.remove(&id) {
                self.memcg_ids.remove(&path);
            }
            if self.filter {
                let _ = self.watched.remove(&id);
            }
            self.stat_read_at.remove(&id);
            self.feed(ModelInput::MemcgGone { id });
        }
    }

    /// At a tick: the whole tree every FULL_RESCAN (new and removed memcgs, every usage), else
    /// only the usage of the memcgs charged since the last tick and their ancestors (whose
    /// usage those charges moved). Walking and reading every memcg at every tick was most of
    /// the collector's cost on an idle node with many pods.
    fn refresh_memcgs(&mut self) {
        if self.last_rescan.elapsed() >= FULL_RESCAN {
            self.rescan();
            return;
        }
        let mut paths = BTreeSet::new();
        for id in std::mem::take(&mut self.dirty_memcgs) {
            let Some(mut path) = self.known_memcgs.get(&id).cloned() else {
                continue;
            };
            while path.starts_with(&self.root) && paths.insert(path.clone()) {
                if !path.pop() {
                    break;
                }
            }
        }
        for path in paths {
            if let Some(id) = self.memcg_ids.get(&path).copied() {
                self.read_usage(id, &path, false);
            }
        }
    }

    /// A memcg's usage and limit; with a limit, also its pressure counters when they moved
    /// (the OOM post-mortem says how long the pod struggled before the kill), and what kind of
    /// memory it holds (memory.stat: at most once a second, and at every full rescan, which
    /// an OOM kill forces).
    fn read_usage(&mut self, id: u64, path: &std::path::Path, full_rescan: bool) {
        let Some(u) = self.ctl.usage_limit(path) else {
            return;
        };
        self.feed(ModelInput::Usage { id, usage: u });
        if u.limit.is_none() {
            return;
        }
        if let Some(p) = self.ctl.pressure(path)
            && self.model.pressure_of(id) != Some(p)
        {
            self.feed(ModelInput::Pressure { id, pressure: p });
        }
        let due = full_rescan
            || self
                .stat_read_at
                .get(&id)
                .is_none_or(|t| t.elapsed() >= STAT_EVERY);
        if due && let Some(stat) = self.ctl.memory_stat(path) {
            self.stat_read_at.insert(id, Instant::now());
            if self.model.memory_stat_of(id) != Some(stat) {
                self.feed(ModelInput::MemoryStat { id, stat });
            }
        }
    }

    /// Everything the model learns goes through here, so a capture holds all of it.
    fn feed(&mut self, input: ModelInput) -> Option<Change> {
        if let Some(r) = self.recording.as_mut() {
            r.push(&input);
        }
        self.model.feed(&input)
    }

    /// At every tick: frame what the capture holds, rotate if due, show the status line.
    fn capture_tick(&mut self) {
        let Some(r) = self.recording.as_mut() else {
            return;
        };
        let model = &self.model;
        r.tick(|| model.facts());
        if let Some(w) = r.writer()
            && self.cfg.status_line
        {
            let c = &self.model.counters;
            eprint!(
                "\rrecording: {} events, {} records, {} written, file {}, drops {}/{}/{}   ",
                c.events,
                w.stats.inputs,
                output::bytes(w.stats.bytes as i64),
                output::bytes(w.file_bytes() as i64),
                c.ring_drops,
                c.rare_drops,
                c.map_full
            );
        }
    }

    fn show(&mut self, out: &mut dyn Write, change: &Change) -> Result<()> {
        if matches!(change, Change::Oom(_) | Change::KillSignal(_)) {
            self.kills.push(change.clone());
        }
        self.printer.show(out, &self.model, change)
    }

    /// Hands the kills (and kill signals) seen since the last call to the observer. A group
    /// kill's row is handed over with every victim: held until none came for a while (the
    /// kernel kills them in one loop, but the ring may wake us after the first), or at the end.
    fn tell_kills(&mut self, observer: &mut dyn Observer, at_end: bool) -> Result<()> {
        let now = output::monotonic_ns();
        let mut held = Vec::new();
        for change in std::mem::take(&mut self.kills) {
            match &change {
                Change::Oom(first) => {
                    let row = self
                        .model
                        .oom_rows()
                        .iter()
                        .rev()
                        .find(|r| r.ts_ns == first.ts_ns && r.invoker_tid == first.invoker_tid)
                        .unwrap_or(first);
                    let last = row.group_victims.last().map_or(row.ts_ns, |g| g.ts_ns);
                    if row.group.is_some() && !at_end && now.saturating_sub(last) < GROUP_SETTLE_NS
                    {
                        held.push(change);
                        continue;
                    }
                    let row = row.clone();
                    observer.kill(&self.model, &row, &self.clock)?;
                }
                Change::KillSignal(row) => observer.kill_signal(&self.model, row, &self.clock)?,
                _ => {}
            }
        }
        self.kills = held;
        Ok(())
    }

    /// The periodic `--by` summary.
    fn show_snapshot(&self, out: &mut dyn Write, by: By) -> Result<()> {
        self.printer
            .snapshot(out, &self.model, output::monotonic_ns(), by)
    }

    fn apply(&mut self, out: &mut dyn Write, event: &Event) -> Result<bool> {
        let memcg = match event {
            Event::Charge(c) => Some(c.memcg_id),
            Event::Reclaim(r) => Some(r.memcg_id),
            Event::KillSignal(k) => Some(k.target_memcg_id),
            // The kernel reports exits of every thread it counted, provisional ones included.
            Event::ThreadExit(e) if self.filter && self.model.keys_of_thread(e.tid).is_empty() => {
                return Ok(false);
            }
            // And execs of threads it counted provisionally: ours if we know the thread or
            // it now runs in a memcg we watch.
            Event::Exec(e)
                if self.filter
                    && self.model.keys_of_thread(e.tid).is_empty()
                    && self.model.keys_of_thread(e.old_tid).is_empty() =>
            {
                Some(e.memcg_id)
            }
            _ => None,
        };
        if let Some(m) = memcg
            && !self.ours(m)
        {
            if let Event::Charge(c) = event {
                let _ = self.charges.remove(&ChargeKey {
                    tid: c.tid,
                    _pad: 0,
                    memcg_id: c.memcg_id,
                });
            }
            return Ok(false);
        }
        let tgid = match event {
            Event::Charge(c) => {
                self.dirty_memcgs.insert(c.memcg_id);
                // A new thread with a name its process did not have: the process may have
                // exec'd or renamed itself since last read. A qemu still mapping its guest RAM:
                // look again, before its vCPUs run. (Not for every new thread: a process that
                // churns threads would cost /proc reads per thread.)
                let renamed = !self.model.knows_thread(c.tid, c.memcg_id)
                    && !c.comm.is_empty()
                    && self.model.process_comm(c.tgid) != Some(c.comm.as_str());
                if renamed || self.qemu_pending.contains(&c.tgid) {
                    self.read_process(c.tgid, true);
                }
                c.tgid
            }
            Event::OomKill(k) => {
                let v = &k.victim;
                // Usage right at the kill tells which limit was hit (peaks stay after it).
                // Totals come from the records before this one in the ring (each at most
                // --flush-bytes or a second old), not from a sweep now: when the collector is
                // slow to get here, the kernel map already holds what happened after the kill
                // (the victim's teardown, a second kill).
                self.rescan();
                // A sample of that usage (views and exports sample at ticks).
                self.feed(ModelInput::Tick(output::monotonic_ns()));
                // Not the victim: reading a dying process's /proc files takes a reference on its
                // memory, and the last reference frees it (in our context, and later).
                self.read_process(v.invoker_tgid, true);
                v.invoker_tgid
            }
            // Written by older captures only; the ring carries OomKill.
            Event::OomVictim(v) => v.invoker_tgid,
            Event::OomKillBeforeGroups(k) => k.victim.invoker_tgid,
            Event::ChargeBeforeKinds(c) => c.tgid,
            Event::Exec(e) => {
                // A new program: its executable, command line and memcg are new. The model
                // resets the process's facts at the event; the new ones follow it.
                self.guest_registered.remove(&e.tgid);
                self.qemu_pending.remove(&e.tgid);
                let _ = self.guest_ram.remove(&e.tgid);
                self.guest_ram_found.retain(|(t, _)| *t != e.tgid);
                let change = self.feed(ModelInput::Event(event.clone()));
                self.read_process(e.tgid, true);
                if let Some(change) = change {
                    self.show(out, &change)?;
                }
                return Ok(false);
            }
            Event::Reclaim(r) => r.tgid,
            Event::OomAttempt(o) => o.tgid,
            // kill(2) queues on the process's leader: its tid is the process's id.
            Event::KillSignal(k) => {
                // The memcg's usage at the signal, not at the last tick: was the pod near its
                // limit when it was killed?
                if let Some(path) = self.known_memcgs.get(&k.target_memcg_id).cloned() {
                    self.read_usage(k.target_memcg_id, &path, false);
                }
                if k.target_tgid == 0 {
                    k.target_tid
                } else {
                    k.target_tgid
                }
            }
            Event::ThreadExit(e) => {
                self.pending_exits
                    .push((Instant::now() + EXIT_GRACE, e.tid));
                if e.group_dead {
                    let _ = self.guest_ram.remove(&e.tgid);
                    self.qemu_pending.remove(&e.tgid);
                    self.guest_registered.remove(&e.tgid);
                    self.guest_ram_found.retain(|(t, _)| *t != e.tgid);
                }
                e.tgid
            }
        };
        self.learn_process(tgid);
        let oom = matches!(event, Event::OomKill(_) | Event::OomVictim(_));
        if let Some(change) = self.feed(ModelInput::Event(event.clone())) {
            self.show(out, &change)?;
        }
        Ok(oom)
    }

    /// Reads the cumulative totals of every tracked pair: catches what was below the flush
    /// threshold and anything whose record was dropped.
    fn sweep(&mut self, out: &mut dyn Write) -> Result<()> {
        self.sweep_where(out, |_| true)?;
        self.register_guest_ram(out)
    }

    /// Reads the pairs of the processes `wanted` accepts, feeds them, then the clock.
    pub(super) fn sweep_where(
        &mut self,
        out: &mut dyn Write,
        wanted: impl Fn(u32) -> bool,
    ) -> Result<()> {
        let now = output::monotonic_ns();
        let mut readings = Vec::new();
        // Pairs of memcgs not (yet) known: ours after a rescan, or dropped.
        let mut foreign: Vec<ChargeKey> = Vec::new();
        let entries = self.read_charge_map();
        for (key, value) in entries.iter().copied() {
            if !wanted(value.tgid) {
                continue;
            }
            // Nothing new: not fed, not recorded (an idle node's sweep costs no capture bytes).
            if self.model.has_totals(key.tid, key.memcg_id, &value.totals) {
                continue;
            }
            if self.filter && !self.known_memcgs.contains_key(&key.memcg_id) {
                foreign.push(key);
                continue;
            }
            self.dirty_memcgs.insert(key.memcg_id);
            readings.push(Charge {
                ts_ns: now,
                tid: key.tid,
                tgid: value.tgid,
                memcg_id: key.memcg_id,
                comm: String::new(),
                totals: value.totals,
                shmem_counted: value.flags & oomtrace_common::CHARGE_SHMEM_COUNTED != 0,
                sock_counted: value.flags & oomtrace_common::CHARGE_SOCK_COUNTED != 0,
            });
        }
        self.charge_entries = entries;
        for key in foreign {
            if self.ours(key.memcg_id) {
                continue; // read at the next sweep, now that the memcg is known
            }
            let _ = self.charges.remove(&key);
        }
        // Sweep readings carry no name; threads that may have been renamed since their last
        // record get theirs from /proc (comm only: no reference on the process's memory).
        let mut reads = 0;
        for c in readings.iter_mut() {
            if reads < MAX_COMM_READS_PER_SWEEP && self.model.may_be_renamed(c) {
                reads += 1;
                if let Some(comm) = procfs::thread_comm(c.tgid, c.tid) {
                    c.comm = comm;
                }
            }
        }
        for c in readings {
            self.learn_process(c.tgid);
            if let Some(change) = self.feed(ModelInput::Sweep(c)) {
                self.show(out, &change)?;
            }
        }
        let skipped = self.probes.skipped_runs();
        if skipped > 0 {
            self.feed(ModelInput::SkippedRuns(skipped));
        }
        let (ring_drops, rare_drops, map_full) = bpf::read_stats(&self.stats);
        self.feed(ModelInput::KernelStats {
            ring_drops,
            rare_drops,
            map_full,
        });
        self.feed(ModelInput::Tick(now));
        Ok(())
    }
}

impl Live {
    /// Every entry of the kernel's charge map: in a few syscalls where the kernel allows
    /// batched lookups (5.6+), else two per key.
    pub(super) fn read_charge_map(&mut self) -> Vec<(ChargeKey, ChargeValue)> {
        let mut entries = std::mem::take(&mut self.charge_entries);
        if let Some(b) = self.charge_batch.as_mut() {
            match b.read_all(&mut entries) {
                Ok(()) => return entries,
                Err(e) => {
                    log::info!("batched reads of the charge map refused ({e}); reading key by key");
                    self.charge_batch = None;
                }
            }
        }
        entries.clear();
        entries.extend(self.charges.iter().filter_map(Result::ok));
        entries
    }
}

/// Bounds the /proc reads a sweep may do for thread names.
const MAX_COMM_READS_PER_SWEEP: usize = 256;

fn drain(ring: &mut RingBuf<MapData>, live: &mut Live, out: &mut dyn Write) -> Result<bool> {
    let mut events = Vec::new();
    let mut undecodable = 0;
    while let Some(item) = ring.next() {
        match decode::decode(&item) {
            Ok(e) => events.push(e),
            Err(err) => {
                undecodable += 1;
                log::warn!("undecodable ring record: {err}");
            }
        }
    }
    if undecodable > 0 {
        // Through the model's entry point, so a capture replays to the same count.
        let total = live.model.counters.decode_errors + undecodable;
        live.feed(ModelInput::DecodeErrors(total));
    }
    let mut oom = false;
    for e in &events {
        oom |= live.apply(out, e)?;
    }
    // After the batch: its records are older than the readings this takes.
    live.register_guest_ram(out)?;
    Ok(oom)
}

/// The capture header: this host, kernel and clocks, and the hooks chosen.
fn capture_header(clock: &Clock, target: &Target, hooks: &[bpf::HookChoice]) -> capture::Header {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    capture::Header {
        host: read("/proc/sys/kernel/hostname"),
        kernel: read("/proc/sys/kernel/osrelease"),
        realtime_offset_ns: i64::try_from(clock.realtime_offset_ns).unwrap_or(0),
        start_mono_ns: clock.start_mono_ns,
        target: match target {
            Target::All => "all".into(),
            Target::Cgroup(c) => c.clone(),
            Target::Pid(p) => format!("pid {p}"),
        },
        hooks: hooks.iter().map(capture::format::SavedHook::from).collect(),
        sequence: 0,
    }
}

/// What the collector chose, for doctor and the start banner.
pub struct Started {
    pub choices: Vec<HookChoice>,
    pub clock: Clock,
    /// What `Config::least_privilege` kept (None: not asked, or the kernel refused).
    pub privileges: Option<crate::privileges::Kept>,
}

impl Started {
    /// What a long-running command says of its capabilities once it is tracing.
    pub fn privileges_line(&self) -> String {
        self.privileges
            .as_ref()
            .map_or_else(|| "capabilities not dropped".to_string(), |k| k.describe())
    }
}

/// What a long-running consumer (the agent) sees besides the printed lines.
pub trait Observer {
    /// An OOM kill, once the model has made its row.
    fn kill(&mut self, model: &Model, row: &OomRow, clock: &Clock) -> Result<()>;
    /// A kill signal another process sent to a watched one (not the kernel's OOM killer).
    fn kill_signal(&mut self, _model: &Model, _row: &KillSignalRow, _clock: &Clock) -> Result<()> {
        Ok(())
    }
    /// Every tick, after the sweep and after the capture framed what it holds.
    fn tick(&mut self, model: &Model, at: &TickInfo) -> Result<()>;
    /// Asked after every tick: end the run (as Ctrl-C would; `top`'s q).
    fn wants_stop(&self) -> bool {
        false
    }
}

/// The collector's own state at a tick.
pub struct TickInfo<'a> {
    pub now_ns: u64,
    pub hooks: &'a [HookChoice],
    /// Why the capture stopped, if it did.
    pub capture_error: Option<String>,
    /// Inputs not recorded while the capture was stopped.
    pub unrecorded: u64,
}

struct NoObserver;

impl Observer for NoObserver {
    fn kill(&mut self, _: &Model, _: &OomRow, _: &Clock) -> Result<()> {
        Ok(())
    }
    fn tick(&mut self, _: &Model, _: &TickInfo) -> Result<()> {
        Ok(())
    }
}

/// Runs until Ctrl-C/SIGTERM, the duration, or the post-OOM delay; returns the final summary.
pub async fn run(
    cfg: Config,
    out: &mut dyn Write,
    on_start: impl FnOnce(&Started),
) -> Result<Summary> {
    run_observed(cfg, out, on_start, &mut NoObserver).await
}

/// `run`, with `observer` told of every kill and every tick.
pub async fn run_observed(
    cfg: Config,
    out: &mut dyn Write,
    on_start: impl FnOnce(&Started),
    observer: &mut dyn Observer,
) -> Result<Summary> {
    let (ctl, root, pid_filter) = preflight(&cfg)?;
    let tracefs = tracefs::find(true)?;
    let kbtf = KernelBtf::load(std::path::Path::new(VMLINUX_BTF))?;
    let filter = root.is_some();
    let opts = bpf::Options {
        filter,
        flush_bytes: cfg.flush_bytes,
        flush_ns: 1_000_000_000,
    };
    let mut probes = bpf::load(&tracefs, &kbtf, cfg.tier, &opts)?;
    // The capability probe parsed the kernel's BTF for its fentry program (~20 MiB, freed):
    // give the heap back now rather than at the first housekeeping pass.
    give_back_heap();
    let ring = probes.take_ring()?;
    let clock = Clock::now();
    let (charges, charge_batch) = probes.take_charges()?;
    let mut live = Live {
        root: root.unwrap_or_else(|| ctl.mount.clone()),
        ctl,
        filter,
        charges,
        charge_batch,
        charge_entries: Vec::new(),
        watched: probes.take_watched()?,
        stats: probes.take_stats()?,
        guest_ram: probes.take_guest_ram()?,
        guest_seen: probes.take_guest_seen()?,
        qemu_pending: HashSet::new(),
        guest_registered: HashSet::new(),
        guest_ram_found: Vec::new(),
        known_memcgs: HashMap::new(),
        memcg_ids: HashMap::new(),
        dirty_memcgs: HashSet::new(),
        stat_read_at: HashMap::new(),
        last_rescan: Instant::now(),
        runtime: crate::runtime_state::RuntimeState::new(cfg.runtime_roots.clone()),
        ignored_memcgs: HashSet::new(),
        pending_exits: Vec::new(),
        model: Model::new(),
        clock,
        cfg: cfg.clone(),
        probes,
        printer: Printer::new(cfg.json, cfg.charges, pid_filter, filter, clock),
        recording: None,
        last_trim: Instant::now(),
        rare_drops_seen: 0,
        last_gc: Instant::now(),
        kills: Vec::new(),
    };
    if let Some(rec) = &cfg.record {
        let header = capture_header(&live.clock, &cfg.target, &live.probes.choices);
        live.recording = Some(recording::Recording::start(rec, header)?);
    }
    live.feed(ModelInput::Budget {
        profile: cfg.budget.0.name.to_string(),
        ratio: cfg.budget.1,
    });
    live.rescan();
    live.probes.attach()?;
    // SAFETY: the ring buffer owns its fd and stays inside the AsyncFd until this function
    // returns, so the fd is neither closed nor reused while it is registered.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("cannot poll the ring buffer: {e}"))?;
    let privileges = if cfg.least_privilege {
        let perf_event_to_open = live.probes.lazy_attach_opens_perf_events()
            && crate::privileges::perf_events_need_sys_admin();
        match crate::privileges::drop_to_still_needed(perf_event_to_open) {
            Ok(kept) => Some(kept),
            Err(e) => {
                log::warn!("cannot drop capabilities ({e}); running with those held at start");
                None
            }
        }
    } else {
        None
    };
    on_start(&Started {
        choices: live.probes.choices.clone(),
        clock: live.clock,
        privileges,
    });

    let mut sigterm =
        tokio::signal::unix::signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint =
        tokio::signal::unix::signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut tick = tokio::time::interval(TICK);
    let deadline = cfg.duration.map(|d| Instant::now() + d);
    let mut oom_deadline: Option<Instant> = None;
    let mut next_snapshot = Instant::now() + cfg.every;
    loop {
        let stop_at = match (deadline, oom_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = tokio::time::sleep_until(stop_at.map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(3600),
            tokio::time::Instant::from_std,
        ));
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("ring buffer poll failed")?;
                let oom = drain(guard.get_inner_mut(), &mut live, out)?;
                guard.clear_ready();
                live.tell_kills(observer, false)?;
                if oom && oom_deadline.is_none() {
                    oom_deadline = cfg.stop_after_oom.map(|d| Instant::now() + d);
                }
                out.flush().ok();
            }
            _ = tick.tick() => {
                // Charge records do not wake us (that would cost the charging thread); read
                // them here.
                if drain(ring.get_mut(), &mut live, out)? && oom_deadline.is_none() {
                    oom_deadline = cfg.stop_after_oom.map(|d| Instant::now() + d);
                }
                live.refresh_memcgs();
                live.retry_pending_qemus();
                live.register_guest_ram(out)?;
                live.probes.flush_logs();
                live.sweep(out)?;
                live.retire_exited(out, false)?;
                live.trim_if_due();
                live.capture_tick();
                live.tell_kills(observer, false)?;
                observer.tick(
                    &live.model,
                    &TickInfo {
                        now_ns: output::monotonic_ns(),
                        hooks: &live.probes.choices,
                        capture_error: live.recording.as_ref().and_then(|r| r.error()),
                        unrecorded: live.recording.as_ref().map_or(0, |r| r.unrecorded),
                    },
                )?;
                if let Some(by) = cfg.by
                    && Instant::now() >= next_snapshot
                {
                    next_snapshot = Instant::now() + cfg.every;
                    live.show_snapshot(out, by)?;
                }
                out.flush().ok();
                if observer.wants_stop() {
                    break;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sleep, if stop_at.is_some() => break,
        }
    }
    drain(ring.get_mut(), &mut live, out)?;
    live.sweep(out)?;
    live.tell_kills(observer, true)?;
    for (program, n) in live.probes.skipped_runs_by_program() {
        if n > 0 {
            log::debug!("{program}: {n} runs skipped by the kernel");
        }
    }
    let mut summary = live.model.summary();
    if cfg.status_line {
        eprintln!();
    }
    if let Some(r) = live.recording.take() {
        let stats = match r.finish() {
            Ok(stats) => stats,
            Err(e) => {
                // The run's numbers stand: the caller shows them, then the error.
                summary.capture_error = Some(format!("{e:#}"));
                return Ok(summary);
            }
        };
        if cfg.status_line {
            eprintln!(
                "oomtrace: wrote {} records in {} ({} file{})",
                stats.inputs,
                output::bytes(stats.bytes as i64),
                stats.files,
                if stats.files == 1 { "" } else { "s" }
            );
        }
    }
    out.flush().ok();
    Ok(summary)
}

/// Returns the heap's free pages to the OS. glibc keeps them until asked; musl's allocator (the
/// static build) unmaps freed spans itself and has no such call.
fn give_back_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}
