//! What kind of memory a memcg holds, as its own memory.stat says (with memory.kmem.usage_in_bytes
//! on cgroup v1). These are per-memcg figures, hierarchical like the usage they explain: the kernel
//! does not attribute dirty or written-back page cache to a thread (writeback ends in interrupt and
//! flusher context), so no thread view ever shows them.
//!
//! A kind a kernel does not count is `None` (v1 has no socket, page-table or stack counters in
//! memory.stat; v2 before 6.2 has no secondary page tables), never 0 presented as a measurement.
use serde::{Deserialize, Serialize};

use crate::cgroupfs::Version;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStat {
    /// Anonymous memory (v2 `anon`, v1 `total_rss`), and its transparent huge pages.
    pub anon: u64,
    pub anon_thp: Option<u64>,
    /// Page cache including shmem (v2 `file`, v1 `total_cache`).
    pub file: u64,
    /// Page cache waiting to be written, and being written (not reclaimable until written).
    pub file_dirty: u64,
    pub file_writeback: u64,
    /// Page cache on the file LRUs (no shmem): the part reclaim can drop once it is clean.
    pub file_lru: u64,
    /// Shared memory and tmpfs (swap-backed: never reclaimable without swap).
    pub shmem: u64,
    /// Socket buffers (v2 `sock`; on v1 TCP memory has its own counter, outside the usage).
    pub sock: Option<u64>,
    /// All kernel memory (v2 `kernel`, or the sum of its parts before 5.18; v1
    /// memory.kmem.usage_in_bytes).
    pub kernel: Option<u64>,
    pub slab: Option<u64>,
    pub pagetables: Option<u64>,
    /// KVM's secondary (EPT/NPT) page tables, v2 since 6.2.
    pub sec_pagetables: Option<u64>,
    pub kernel_stack: Option<u64>,
}

impl MemoryStat {
    /// Clean page cache: what reclaim can drop without writing anything first.
    pub fn clean_file(&self) -> u64 {
        self.file_lru
            .saturating_sub(self.file_dirty.saturating_add(self.file_writeback))
    }

    /// Parses memory.stat (`kmem` is v1's memory.kmem.usage_in_bytes when it was read). None when
    /// the text is not a memory.stat of that version.
    pub fn parse(version: Version, text: &str, kmem: Option<u64>) -> Option<Self> {
        let get = |key: &str| keyed(text, key);
        match version {
            Version::V1 => Some(Self {
                anon: get("total_rss")?,
                anon_thp: get("total_rss_huge"),
                file: get("total_cache")?,
                file_dirty: get("total_dirty").unwrap_or(0),
                file_writeback: get("total_writeback").unwrap_or(0),
                file_lru: get("total_active_file")?.saturating_add(get("total_inactive_file")?),
                shmem: get("total_shmem").unwrap_or(0),
                sock: None,
                kernel: kmem,
                slab: None,
                pagetables: None,
                sec_pagetables: None,
                kernel_stack: None,
            }),
            Version::V2 => {
                let slab = get("slab").or_else(|| {
                    Some(get("slab_reclaimable")?.saturating_add(get("slab_unreclaimable")?))
                });
                let (pagetables, sec_pagetables, kernel_stack) = (
                    get("pagetables"),
                    get("sec_pagetables"),
                    get("kernel_stack"),
                );
                let kernel = get("kernel").or_else(|| {
                    [
                        slab,
                        pagetables,
                        sec_pagetables,
                        kernel_stack,
                        get("percpu"),
                    ]
                    .into_iter()
                    .flatten()
                    .reduce(u64::saturating_add)
                });
                Some(Self {
                    anon: get("anon")?,
                    anon_thp: get("anon_thp"),
                    file: get("file")?,
                    file_dirty: get("file_dirty").unwrap_or(0),
                    file_writeback: get("file_writeback").unwrap_or(0),
                    file_lru: get("active_file")?.saturating_add(get("inactive_file")?),
                    shmem: get("shmem").unwrap_or(0),
                    sock: get("sock"),
                    kernel,
                    slab,
                    pagetables,
                    sec_pagetables,
                    kernel_stack,
                })
            }
        }
    }

    /// Each kind by name with its bytes, in the order views print them: (name, now). Parts
    /// ("of which") follow their whole.
    pub fn kinds(&self) -> [(&'static str, Option<u64>); 13] {
        [
            ("anon", Some(self.anon)),
            ("anon_thp", self.anon_thp),
            ("page_cache", Some(self.file.saturating_sub(self.shmem))),
            ("page_cache_clean", Some(self.clean_file())),
            ("page_cache_dirty", Some(self.file_dirty)),
            ("page_cache_writeback", Some(self.file_writeback)),
            ("shmem", Some(self.shmem)),
            ("sock", self.sock),
            ("kernel", self.kernel),
            ("slab", self.slab),
            ("pagetables", self.pagetables),
            ("sec_pagetables", self.sec_pagetables),
            ("kernel_stack", self.kernel_stack),
        ]
    }
}

/// `key value` lines: the value of `key`.
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_reads_the_hierarchical_totals_and_knows_no_socket_or_page_tables() {
        let text = "cache 1\nrss 2\ntotal_cache 8192000\ntotal_rss 4096000\ntotal_rss_huge 2097152\n\
                    total_shmem 1000000\ntotal_dirty 300000\ntotal_writeback 100000\n\
                    total_inactive_file 5000000\ntotal_active_file 2000000\n";
        let s = MemoryStat::parse(Version::V1, text, Some(6_000_000)).unwrap();
        assert_eq!(s.anon, 4_096_000);
        assert_eq!(s.anon_thp, Some(2_097_152));
        assert_eq!(s.file, 8_192_000);
        assert_eq!(s.clean_file(), 7_000_000 - 400_000);
        assert_eq!(s.kernel, Some(6_000_000));
        assert_eq!((s.sock, s.pagetables, s.sec_pagetables), (None, None, None));
    }

    #[test]
    fn v2_reads_every_kind_and_sums_kernel_where_the_kernel_line_is_missing() {
        let text = "anon 100\nfile 50\nkernel_stack 4\npagetables 6\npercpu 1\nsock 9\nshmem 10\n\
                    file_dirty 7\nfile_writeback 3\nanon_thp 0\ninactive_file 30\nactive_file 10\n\
                    slab_reclaimable 2\nslab_unreclaimable 5\n";
        let s = MemoryStat::parse(Version::V2, text, None).unwrap();
        assert_eq!(s.slab, Some(7));
        assert_eq!(
            s.kernel,
            Some(7 + 6 + 4 + 1),
            "no sec_pagetables before 6.2"
        );
        assert_eq!(s.sec_pagetables, None);
        assert_eq!(s.sock, Some(9));
        assert_eq!(s.clean_file(), 30);
        let with_kernel = format!("{text}kernel 99\nsec_pagetables 2\n");
        let s = MemoryStat::parse(Version::V2, &with_kernel, None).unwrap();
        assert_eq!((s.kernel, s.sec_pagetables), (Some(99), Some(2)));
    }

    #[test]
    fn garbage_is_not_a_memory_stat() {
        for t in ["", "anon x\nfile 1\n", "total_rss 1\n", "\u{0}\u{1}"] {
            assert_eq!(MemoryStat::parse(Version::V2, t, None), None, "{t:?}");
        }
        assert_eq!(
            MemoryStat::parse(Version::V1, "anon 1\nfile 2\n", None),
            None
        );
    }
}
