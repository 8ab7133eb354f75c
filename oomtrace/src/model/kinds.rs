//! The kinds of memory a memcg holds (anonymous, page cache clean / dirty / under writeback,
//! shmem, socket buffers, kernel), from the memcg's own memory.stat, and how each moved in the
//! last 60 s. Per memcg, never per thread: the kernel does not say which thread's page cache is
//! dirty. Pure functions of the state; no I/O.
use serde::Serialize;

use super::{history::Series, views::WINDOW_LONG_NS};
use crate::{memory_stat::MemoryStat, units::bytes};

/// Kinds that are not a part of another: the ones "grew most" chooses among.
const WHOLE_KINDS: [&str; 5] = ["anon", "page_cache", "shmem", "sock", "kernel"];

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct KindView {
    /// anon, anon_thp (of anon), page_cache, page_cache_clean / _dirty / _writeback (of
    /// page_cache), shmem, sock, kernel, slab / pagetables / sec_pagetables / kernel_stack (of
    /// kernel).
    pub kind: &'static str,
    /// Null where this kernel does not count the kind for a memcg.
    pub bytes: Option<u64>,
    pub last_60s: Option<i64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct KindsView {
    /// Where the figures come from: the memcg's own counters ("memory.stat", or "OOM report"
    /// for the stats the kernel printed at a kill).
    pub source: &'static str,
    pub kinds: Vec<KindView>,
    /// Clean page cache: what reclaim could drop without writing anything first.
    pub reclaimable: u64,
    /// The whole kind (not a part) that grew most in the window, and by how much.
    pub grew_most: Option<(&'static str, i64)>,
    /// Seconds the window covers (60, or less when first read later).
    pub window_s: f64,
}

impl KindsView {
    pub fn bytes(&self, kind: &str) -> Option<u64> {
        self.kinds.iter().find(|k| k.kind == kind)?.bytes
    }

    fn growth(&self, kind: &str) -> Option<i64> {
        self.kinds.iter().find(|k| k.kind == kind)?.last_60s
    }
}

pub fn kinds_view(now: &MemoryStat, history: &Series<MemoryStat>, now_ns: u64) -> KindsView {
    let (t0, then) = history.at(now_ns, WINDOW_LONG_NS).unwrap_or((now_ns, now));
    kinds_between(now, then, now_ns.saturating_sub(t0), "memory.stat")
}

/// The kinds at one moment, without a window: what an OOM report's memory stats say.
pub fn kinds_at(now: &MemoryStat, source: &'static str) -> KindsView {
    kinds_between(now, now, 0, source)
}

fn kinds_between(
    now: &MemoryStat,
    then: &MemoryStat,
    window_ns: u64,
    source: &'static str,
) -> KindsView {
    let before = then.kinds();
    let kinds: Vec<KindView> = now
        .kinds()
        .iter()
        .zip(before.iter())
        .map(|((kind, b), (_, was))| KindView {
            kind,
            bytes: *b,
            last_60s: b.zip(*was).map(|(n, w)| n as i64 - w as i64),
        })
        .collect();
    let grew_most = kinds
        .iter()
        .filter(|k| WHOLE_KINDS.contains(&k.kind))
        .filter_map(|k| Some((k.kind, k.last_60s?)))
        .filter(|(_, d)| *d > 0)
        .max_by_key(|(_, d)| *d);
    KindsView {
        source,
        kinds,
        reclaimable: now.clean_file(),
        grew_most,
        window_s: window_ns as f64 / 1e9,
    }
}

/// The share of a memcg's page cache that is clean, for the budget: a class's page cache counts
/// as reclaimable in this proportion. Shmem is in the denominator only where the charge hook
/// could not tell it (then it is in the classes' page cache too). The kernel keeps no
/// per-thread dirty count, so this is the memcg's ratio, said as such.
pub fn clean_share(stat: &MemoryStat, shmem_told: bool) -> f64 {
    let cache = if shmem_told {
        stat.file.saturating_sub(stat.shmem)
    } else {
        stat.file
    };
    if cache == 0 {
        return 0.0;
    }
    (stat.clean_file() as f64 / cache as f64).clamp(0.0, 1.0)
}

/// " At the kill the pod held 300 MiB of page cache (dirty 120 MiB, under writeback 20 MiB)
/// ...; 90 MiB of it was clean (reclaimable). Page cache grew most in the last 60 s (+250 MiB)."
pub fn sentence(k: &KindsView, scope: &str) -> String {
    let b = |kind: &str| {
        k.bytes(kind)
            .map_or_else(|| "-".into(), |v| bytes(v as i64))
    };
    let mut parts = vec![format!("anon {}", b("anon"))];
    parts.push(format!(
        "page cache {} (dirty {}, under writeback {})",
        b("page_cache"),
        b("page_cache_dirty"),
        b("page_cache_writeback")
    ));
    for (kind, name) in [
        ("shmem", "shmem"),
        ("sock", "socket buffers"),
        ("kernel", "kernel"),
    ] {
        if k.bytes(kind).is_some_and(|v| v > 0) {
            parts.push(format!("{name} {}", b(kind)));
        }
    }
    let mut s = format!(
        " At the kill {scope} held {}; {} of it was clean page cache (reclaimable).",
        parts.join(", "),
        bytes(k.reclaimable as i64)
    );
    if let Some((kind, d)) = k.grew_most {
        let name = match kind {
            "page_cache" => "Page cache",
            "shmem" => "Shmem",
            "sock" => "Socket memory",
            "kernel" => "Kernel memory",
            _ => "Anonymous memory",
        };
        let dirty = match (kind, k.growth("page_cache_dirty")) {
            ("page_cache", Some(dd)) if dd > 0 => format!(", dirty +{}", bytes(dd)),
            _ => String::new(),
        };
        s.push_str(&format!(
            " {name} grew most in the last {:.0} s (+{}{dirty}).",
            k.window_s,
            bytes(d)
        ));
    }
    s
}
