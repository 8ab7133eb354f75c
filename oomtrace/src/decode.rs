//! Ring-buffer records → decoded events. Pure: no I/O, table-tested.
use oomtrace_common as c;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use oomtrace_common::ChargeTotals;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub ts_ns: u64,
    pub tid: u32,
    pub tgid: u32,
    pub memcg_id: u64,
    pub comm: String,
    pub totals: ChargeTotals,
    /// The program that counted told shmem from the rest of the page cache (the tracepoint
    /// tier): `totals.shmem` is a measurement, not a zero.
    pub shmem_counted: bool,
    /// Socket buffers were counted (the tracepoint tier on cgroup v2): `totals.sock` is a
    /// measurement.
    pub sock_counted: bool,
}

/// Charge totals as captures before shmem and socket buffers were counted stored them (read,
/// never made).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotalsBeforeKinds {
    pub anon: i64,
    pub file: i64,
    pub kernel: i64,
    pub guest: i64,
}

/// A charge reading as captures before shmem and socket buffers were counted stored it (read,
/// never made).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeBeforeKinds {
    pub ts_ns: u64,
    pub tid: u32,
    pub tgid: u32,
    pub memcg_id: u64,
    pub comm: String,
    pub totals: TotalsBeforeKinds,
}

impl From<&ChargeBeforeKinds> for Charge {
    fn from(c: &ChargeBeforeKinds) -> Self {
        let t = &c.totals;
        Self {
            ts_ns: c.ts_ns,
            tid: c.tid,
            tgid: c.tgid,
            memcg_id: c.memcg_id,
            comm: c.comm.clone(),
            totals: ChargeTotals {
                anon: t.anon,
                file: t.file,
                kernel: t.kernel,
                guest: t.guest,
                shmem: 0,
                sock: 0,
            },
            shmem_counted: false,
            sock_counted: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomVictim {
    pub ts_ns: u64,
    pub invoker_tid: u32,
    pub invoker_tgid: u32,
    pub invoker_comm: String,
    pub victim_pid: u32,
    pub victim_comm: String,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    pub uid: u32,
    pub oom_score_adj: i32,
}

/// An OOM kill with the kernel's own facts at the event: the invoker's memcg, the OOM's memcg
/// where the kernel-function oom hook gives it, and the memory.oom.group memcg the victim is
/// killed with (0: not known, or none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomKill {
    pub victim: OomVictim,
    pub invoker_memcg_id: u64,
    pub oom_memcg_id: u64,
    pub group_memcg_id: u64,
    /// When the memcg OOM that made this kill began (kernel-function tier; 0: not known):
    /// kills with the same start are one OOM.
    pub oom_start_ns: u64,
}

/// An OOM kill as captures before memory.oom.group facts stored it (read, never made).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomKillBeforeGroups {
    pub victim: OomVictim,
    pub invoker_memcg_id: u64,
    pub oom_memcg_id: u64,
}

impl From<&OomKillBeforeGroups> for OomKill {
    fn from(k: &OomKillBeforeGroups) -> Self {
        Self {
            victim: k.victim.clone(),
            invoker_memcg_id: k.invoker_memcg_id,
            oom_memcg_id: k.oom_memcg_id,
            group_memcg_id: 0,
            oom_start_ns: 0,
        }
    }
}

/// A thread exec'd a new program: its name from now on, and the memcg it is in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    pub ts_ns: u64,
    pub tid: u32,
    pub tgid: u32,
    pub old_tid: u32,
    pub memcg_id: u64,
    pub comm: String,
}

/// A process sent SIGKILL or SIGTERM to a tracked thread (not the kernel: not the OOM killer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillSignal {
    pub ts_ns: u64,
    pub sender_tid: u32,
    pub sender_tgid: u32,
    pub sender_comm: String,
    pub target_tid: u32,
    /// 0: not known (the classic tracepoint gives the thread only).
    pub target_tgid: u32,
    pub target_comm: String,
    pub target_memcg_id: u64,
    /// The memcg's usage at the signal, as the kernel counted it (None: not read here).
    pub usage_bytes: Option<u64>,
    pub sig: i32,
    pub code: i32,
    pub result: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaim {
    pub ts_ns: u64,
    pub tid: u32,
    pub tgid: u32,
    pub comm: String,
    pub memcg_id: u64,
    pub duration_ns: u64,
    pub nr_reclaimed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadExit {
    pub ts_ns: u64,
    pub tid: u32,
    pub tgid: u32,
    pub comm: String,
    pub group_dead: bool,
}

/// One memcg OOM from start to end (kernel-function tier only: mem_cgroup_out_of_memory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomAttempt {
    /// When the OOM began.
    pub ts_ns: u64,
    pub tid: u32,
    pub tgid: u32,
    pub comm: String,
    pub memcg_id: u64,
    pub order: i32,
    pub duration_ns: u64,
    /// A victim was chosen (or one was already dying); false: nothing could be killed.
    pub killed: bool,
}

/// New kinds go at the end: captures store events by variant index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A charge record as captures before shmem and socket buffers were counted stored it
    /// (read, never made).
    ChargeBeforeKinds(ChargeBeforeKinds),
    /// An OOM kill as captures before the kernel's memcg facts stored it (read, never made).
    OomVictim(OomVictim),
    Reclaim(Reclaim),
    ThreadExit(ThreadExit),
    OomAttempt(OomAttempt),
    OomKillBeforeGroups(OomKillBeforeGroups),
    Exec(Exec),
    KillSignal(KillSignal),
    OomKill(OomKill),
    Charge(Charge),
}

impl Event {
    /// When the kernel produced it (CLOCK_MONOTONIC ns).
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Charge(c) => c.ts_ns,
            Event::ChargeBeforeKinds(c) => c.ts_ns,
            Event::OomVictim(v) => v.ts_ns,
            Event::Reclaim(r) => r.ts_ns,
            Event::ThreadExit(e) => e.ts_ns,
            Event::OomAttempt(o) => o.ts_ns,
            Event::OomKillBeforeGroups(k) => k.victim.ts_ns,
            Event::OomKill(k) => k.victim.ts_ns,
            Event::Exec(e) => e.ts_ns,
            Event::KillSignal(k) => k.ts_ns,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short for kind {kind}")]
    TooShort { kind: u32, len: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
}

/// Kernel comm bytes (NUL-padded, maybe not UTF-8) → String.
pub fn comm(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Copies a `#[repr(C)]` record out of possibly unaligned ring-buffer bytes.
fn read<T: Copy>(kind: u32, data: &[u8]) -> Result<T, DecodeError> {
    if data.len() < size_of::<T>() {
        return Err(DecodeError::TooShort {
            kind,
            len: data.len(),
        });
    }
    // SAFETY: the length is checked above, T is a plain-old-data #[repr(C)] struct of integers
    // (every bit pattern is valid), and read_unaligned copes with any alignment.
    Ok(unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<T>()) })
}

pub fn decode(data: &[u8]) -> Result<Event, DecodeError> {
    let kind = match data.get(..4) {
        Some(b) => u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        None => {
            return Err(DecodeError::TooShort {
                kind: 0,
                len: data.len(),
            });
        }
    };
    Ok(match kind {
        c::KIND_CHARGE => {
            let e: c::ChargeEvent = read(kind, data)?;
            Event::Charge(Charge {
                ts_ns: e.ts_ns,
                tid: e.tid,
                tgid: e.tgid,
                memcg_id: e.memcg_id,
                comm: comm(&e.comm),
                totals: e.totals,
                shmem_counted: e.flags & c::CHARGE_SHMEM_COUNTED != 0,
                sock_counted: e.flags & c::CHARGE_SOCK_COUNTED != 0,
            })
        }
        c::KIND_OOM_VICTIM => {
            let e: c::OomVictimEvent = read(kind, data)?;
            let victim = OomVictim {
                ts_ns: e.ts_ns,
                invoker_tid: e.invoker_tid,
                invoker_tgid: e.invoker_tgid,
                invoker_comm: comm(&e.invoker_comm),
                victim_pid: e.victim_pid,
                victim_comm: comm(&e.victim_comm),
                total_vm_kb: e.total_vm_kb,
                anon_rss_kb: e.anon_rss_kb,
                file_rss_kb: e.file_rss_kb,
                shmem_rss_kb: e.shmem_rss_kb,
                pgtables_kb: e.pgtables_kb,
                uid: e.uid,
                oom_score_adj: e.oom_score_adj,
            };
            Event::OomKill(OomKill {
                victim,
                invoker_memcg_id: e.invoker_memcg_id,
                oom_memcg_id: e.oom_memcg_id,
                group_memcg_id: e.group_memcg_id,
                oom_start_ns: e.oom_start_ns,
            })
        }
        c::KIND_EXEC => {
            let e: c::ExecEvent = read(kind, data)?;
            Event::Exec(Exec {
                ts_ns: e.ts_ns,
                tid: e.tid,
                tgid: e.tgid,
                old_tid: e.old_tid,
                memcg_id: e.memcg_id,
                comm: comm(&e.comm),
            })
        }
        c::KIND_KILL_SIGNAL => {
            let e: c::KillSignalEvent = read(kind, data)?;
            Event::KillSignal(KillSignal {
                ts_ns: e.ts_ns,
                sender_tid: e.sender_tid,
                sender_tgid: e.sender_tgid,
                sender_comm: comm(&e.sender_comm),
                target_tid: e.target_tid,
                target_tgid: e.target_tgid,
                target_comm: comm(&e.target_comm),
                target_memcg_id: e.target_memcg_id,
                usage_bytes: (e.usage_bytes != u64::MAX).then_some(e.usage_bytes),
                sig: e.sig,
                code: e.code,
                result: e.result,
            })
        }
        c::KIND_RECLAIM => {
            let e: c::ReclaimEvent = read(kind, data)?;
            Event::Reclaim(Reclaim {
                ts_ns: e.ts_ns,
                tid: e.tid,
                tgid: e.tgid,
                comm: comm(&e.comm),
                memcg_id: e.memcg_id,
                duration_ns: e.duration_ns,
                nr_reclaimed: e.nr_reclaimed,
            })
        }
        c::KIND_THREAD_EXIT => {
            let e: c::ThreadExitEvent = read(kind, data)?;
            Event::ThreadExit(ThreadExit {
                ts_ns: e.ts_ns,
                tid: e.tid,
                tgid: e.tgid,
                comm: comm(&e.comm),
                group_dead: e.group_dead != 0,
            })
        }
        c::KIND_OOM_ATTEMPT => {
            let e: c::OomAttemptEvent = read(kind, data)?;
            Event::OomAttempt(OomAttempt {
                ts_ns: e.start_ns,
                tid: e.tid,
                tgid: e.tgid,
                comm: comm(&e.comm),
                memcg_id: e.memcg_id,
                order: e.order,
                duration_ns: e.duration_ns,
                killed: e.killed != 0,
            })
        }
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain #[repr(C)] value for a test fixture.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn comm16(s: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    #[test]
    fn decode_charge_roundtrips_fields_and_comm() {
        let e = c::ChargeEvent {
            kind: c::KIND_CHARGE,
            tid: 7,
            tgid: 5,
            flags: c::CHARGE_FIRST | c::CHARGE_SHMEM_COUNTED,
            ts_ns: 99,
            memcg_id: 2906,
            totals: ChargeTotals {
                anon: 4096,
                file: 0,
                kernel: 8,
                guest: 4096,
                shmem: 0,
                sock: 0,
            },
            comm: comm16("CPU 0/KVM"),
        };
        let Ok(Event::Charge(d)) = decode(&bytes_of(&e)) else {
            panic!("not a charge")
        };
        assert_eq!((d.tid, d.tgid, d.memcg_id, d.ts_ns), (7, 5, 2906, 99));
        assert_eq!(d.comm, "CPU 0/KVM");
        assert_eq!(d.totals.total(), 4104);
        assert!(d.shmem_counted && !d.sock_counted);
    }

    #[test]
    fn decode_rejects_short_empty_and_unknown_records() {
        assert_eq!(decode(&[]), Err(DecodeError::TooShort { kind: 0, len: 0 }));
        let mut short = c::KIND_CHARGE.to_ne_bytes().to_vec();
        short.extend([0; 8]);
        assert_eq!(
            decode(&short),
            Err(DecodeError::TooShort { kind: 1, len: 12 })
        );
        assert_eq!(
            decode(&77u32.to_ne_bytes()),
            Err(DecodeError::UnknownKind(77))
        );
    }

    #[test]
    fn decode_oom_attempt_keeps_start_duration_and_outcome() {
        let e = c::OomAttemptEvent {
            kind: c::KIND_OOM_ATTEMPT,
            tid: 9,
            tgid: 8,
            order: 0,
            start_ns: 1_000,
            duration_ns: 2_500,
            memcg_id: 77,
            killed: 0,
            _pad: 0,
            comm: comm16("IO iothread1"),
        };
        let Ok(Event::OomAttempt(d)) = decode(&bytes_of(&e)) else {
            panic!("not an OOM attempt")
        };
        assert_eq!((d.ts_ns, d.duration_ns, d.memcg_id), (1_000, 2_500, 77));
        assert!(!d.killed);
        assert_eq!(d.comm, "IO iothread1");
    }

    #[test]
    fn decode_exec_and_oom_kill_keep_the_kernels_memcg_facts() {
        let e = c::ExecEvent {
            kind: c::KIND_EXEC,
            tid: 41,
            tgid: 41,
            old_tid: 43,
            ts_ns: 5,
            memcg_id: 3001,
            comm: comm16("memhold"),
        };
        let Ok(Event::Exec(d)) = decode(&bytes_of(&e)) else {
            panic!("not an exec")
        };
        assert_eq!((d.tid, d.tgid, d.old_tid, d.memcg_id), (41, 41, 43, 3001));
        assert_eq!(d.comm, "memhold");
        let v = c::OomVictimEvent {
            kind: c::KIND_OOM_VICTIM,
            invoker_tid: 41,
            invoker_tgid: 41,
            victim_pid: 7,
            ts_ns: 9,
            total_vm_kb: 1,
            anon_rss_kb: 2,
            file_rss_kb: 3,
            shmem_rss_kb: 4,
            pgtables_kb: 5,
            uid: 107,
            oom_score_adj: 986,
            invoker_comm: comm16("memhold"),
            victim_comm: comm16("qemu-system-x86"),
            invoker_memcg_id: 3001,
            oom_memcg_id: 2999,
            group_memcg_id: 3000,
            oom_start_ns: 8,
        };
        let Ok(Event::OomKill(k)) = decode(&bytes_of(&v)) else {
            panic!("not an OOM kill")
        };
        assert_eq!(
            (
                k.invoker_memcg_id,
                k.oom_memcg_id,
                k.group_memcg_id,
                k.oom_start_ns
            ),
            (3001, 2999, 3000, 8)
        );
        assert_eq!(k.victim.invoker_comm, "memhold");
        assert_eq!(k.victim.victim_comm, "qemu-system-x86");
        assert_eq!((k.victim.anon_rss_kb, k.victim.oom_score_adj), (2, 986));
    }

    #[test]
    fn comm_stops_at_nul_and_tolerates_invalid_utf8() {
        assert_eq!(comm(b"IO iothread1\0\0\0\0"), "IO iothread1");
        assert_eq!(comm(&[0xff, b'a', 0]), "\u{fffd}a");
        assert_eq!(comm(b"0123456789abcdef"), "0123456789abcdef");
    }
}
