//! A Perfetto trace (ui.perfetto.dev) of a capture: counter tracks per memcg (usage, limit) and
//! per class in it, instant events for OOM kills, slices for memcg reclaim. The protobuf
//! messages below are the subset of perfetto's trace.proto we write, with its field numbers.
use std::collections::BTreeMap;

use prost::Message;

use crate::model::{Change, views::Snapshot};

#[derive(Clone, PartialEq, Message)]
pub struct Trace {
    #[prost(message, repeated, tag = "1")]
    pub packet: Vec<TracePacket>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TracePacket {
    #[prost(uint64, optional, tag = "8")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "10")]
    pub trusted_packet_sequence_id: Option<u32>,
    #[prost(message, optional, tag = "11")]
    pub track_event: Option<TrackEvent>,
    #[prost(uint32, optional, tag = "13")]
    pub sequence_flags: Option<u32>,
    #[prost(message, optional, tag = "60")]
    pub track_descriptor: Option<TrackDescriptor>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TrackDescriptor {
    #[prost(uint64, optional, tag = "1")]
    pub uuid: Option<u64>,
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "5")]
    pub parent_uuid: Option<u64>,
    #[prost(message, optional, tag = "8")]
    pub counter: Option<CounterDescriptor>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CounterDescriptor {
    /// UNIT_SIZE_BYTES = 3.
    #[prost(int32, optional, tag = "3")]
    pub unit: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TrackEvent {
    /// 1 slice begin, 2 slice end, 3 instant, 4 counter.
    #[prost(int32, optional, tag = "9")]
    pub r#type: Option<i32>,
    #[prost(uint64, optional, tag = "11")]
    pub track_uuid: Option<u64>,
    #[prost(string, repeated, tag = "22")]
    pub categories: Vec<String>,
    #[prost(string, optional, tag = "23")]
    pub name: Option<String>,
    #[prost(int64, optional, tag = "30")]
    pub counter_value: Option<i64>,
}

const SEQ: u32 = 1;
const SEQ_INCREMENTAL_STATE_CLEARED: u32 = 1;
const UNIT_SIZE_BYTES: i32 = 3;
const TYPE_SLICE_BEGIN: i32 = 1;
const TYPE_SLICE_END: i32 = 2;
const TYPE_INSTANT: i32 = 3;
const TYPE_COUNTER: i32 = 4;

/// Builds the trace while a capture is replayed.
#[derive(Default)]
pub struct Builder {
    trace: Trace,
    tracks: BTreeMap<String, u64>,
    next_uuid: u64,
}

impl Builder {
    pub fn new() -> Self {
        let mut b = Self {
            next_uuid: 1,
            ..Default::default()
        };
        b.trace.packet.push(TracePacket {
            trusted_packet_sequence_id: Some(SEQ),
            sequence_flags: Some(SEQ_INCREMENTAL_STATE_CLEARED),
            ..Default::default()
        });
        b
    }

    /// The track named `name` (created on first use under `parent`).
    fn track(&mut self, name: &str, parent: Option<u64>, counter: bool) -> u64 {
        if let Some(u) = self.tracks.get(name) {
            return *u;
        }
        let uuid = self.next_uuid;
        self.next_uuid += 1;
        self.tracks.insert(name.to_string(), uuid);
        self.trace.packet.push(TracePacket {
            trusted_packet_sequence_id: Some(SEQ),
            track_descriptor: Some(TrackDescriptor {
                uuid: Some(uuid),
                name: Some(name.to_string()),
                parent_uuid: parent,
                counter: counter.then_some(CounterDescriptor {
                    unit: Some(UNIT_SIZE_BYTES),
                }),
            }),
            ..Default::default()
        });
        uuid
    }

    fn event(
        &mut self,
        ts: u64,
        track: u64,
        r#type: i32,
        name: Option<String>,
        value: Option<i64>,
    ) {
        self.trace.packet.push(TracePacket {
            timestamp: Some(ts),
            trusted_packet_sequence_id: Some(SEQ),
            track_event: Some(TrackEvent {
                r#type: Some(r#type),
                track_uuid: Some(track),
                categories: vec!["oomtrace".into()],
                name,
                counter_value: value,
            }),
            ..Default::default()
        });
    }

    /// Counter values at a tick: each memcg's usage and limit, and its bytes per class.
    pub fn counters(&mut self, ts: u64, snap: &Snapshot) {
        for m in &snap.memcgs {
            let group = self.track(&format!("memcg {}", m.memcg), None, false);
            if let Some(u) = m.usage {
                let t = self.track(&format!("memcg {} usage", m.memcg), Some(group), true);
                self.event(ts, t, TYPE_COUNTER, None, i64::try_from(u).ok());
            }
            if let Some(l) = m.limit {
                let t = self.track(&format!("memcg {} limit", m.memcg), Some(group), true);
                self.event(ts, t, TYPE_COUNTER, None, i64::try_from(l).ok());
            }
            for c in &m.classes {
                let t = self.track(
                    &format!("memcg {} class {}", m.memcg, c.class),
                    Some(group),
                    true,
                );
                self.event(ts, t, TYPE_COUNTER, None, Some(c.now));
            }
        }
    }

    /// OOM kills and kill signals as instants, reclaim passes as slices.
    pub fn change(&mut self, change: &Change) {
        match change {
            Change::Oom(o) => {
                let t = self.track("OOM kills", None, false);
                let name = format!(
                    "OOM kill: {} (pid {}) killed; invoked by {} ({}) in {}",
                    o.victim_comm, o.victim_pid, o.invoker_comm, o.invoker_class, o.memcg
                );
                self.event(o.ts_ns, t, TYPE_INSTANT, Some(name), None);
            }
            Change::OomGroupVictim(g) => {
                let t = self.track("OOM kills", None, false);
                let name = format!(
                    "killed with it (memory.oom.group of {}): {} (pid {})",
                    g.group, g.victim.comm, g.victim.pid
                );
                self.event(g.victim.ts_ns, t, TYPE_INSTANT, Some(name), None);
            }
            Change::Reclaim(r) => {
                let t = self.track(&format!("reclaim {}", r.memcg), None, false);
                let name = format!("reclaim by {} ({} pages)", r.comm, r.nr_reclaimed);
                self.event(
                    r.ts_ns.saturating_sub(r.duration_ns),
                    t,
                    TYPE_SLICE_BEGIN,
                    Some(name),
                    None,
                );
                self.event(r.ts_ns, t, TYPE_SLICE_END, None, None);
            }
            Change::OomAttempt(o) => {
                let t = self.track(&format!("memcg OOM {}", o.memcg), None, false);
                let name = format!(
                    "memcg OOM by {} ({}): {}",
                    o.comm,
                    o.class,
                    if o.killed {
                        "victim chosen"
                    } else {
                        "nothing killed"
                    }
                );
                self.event(o.ts_ns, t, TYPE_SLICE_BEGIN, Some(name), None);
                self.event(o.ts_ns + o.duration_ns, t, TYPE_SLICE_END, None, None);
            }
            Change::KillSignal(k) => {
                let t = self.track("kill signals", None, false);
                let name = format!(
                    "{} from {} ({}, pid {}) to {} (pid {}) in {}",
                    k.signal, k.sender_comm, k.sender_kind, k.sender_pid, k.process, k.pid, k.memcg
                );
                self.event(k.ts_ns, t, TYPE_INSTANT, Some(name), None);
            }
            Change::Charge(_) | Change::Exit(_) | Change::Exec(_) => {}
        }
    }

    pub fn finish(self) -> Vec<u8> {
        self.trace.encode_to_vec()
    }
}
