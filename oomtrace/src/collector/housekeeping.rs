//! Keeping the collector bounded: which memcgs are ours, retiring exited threads, giving back
//! memory, finding threads whose exit record was lost.
use std::{io::Write, time::Instant};

use anyhow::Result;
use oomtrace_common::ChargeKey;

use super::{GC_EVERY, Live, MAX_IGNORED_MEMCGS, TRIM_EVERY};
use crate::model::input::ModelInput;

impl Live {
    /// Whether a memcg belongs to what we watch. An id never seen may be a memcg made since the
    /// last rescan: look again once; if it is still not ours, the kernel is told to ignore it.
    pub(super) fn ours(&mut self, memcg_id: u64) -> bool {
        if !self.filter || self.known_memcgs.contains_key(&memcg_id) {
            return true;
        }
        if self.ignored_memcgs.contains(&memcg_id) {
            return false;
        }
        self.rescan();
        if self.known_memcgs.contains_key(&memcg_id) {
            return true;
        }
        if self.ignored_memcgs.len() >= MAX_IGNORED_MEMCGS {
            // Memcgs come and go on a node: forget the old verdicts rather than grow.
            for id in self.ignored_memcgs.drain() {
                let _ = self.watched.remove(&id);
            }
        }
        self.ignored_memcgs.insert(memcg_id);
        let _ = self.watched.insert(&memcg_id, &0u8, 0);
        false
    }

    /// Every TRIM_EVERY: give back capacity and heap left over from bursts of threads, and when
    /// exit records were lost, retire the threads that are gone (from /proc).
    pub(super) fn trim_if_due(&mut self) {
        if self.last_trim.elapsed() >= TRIM_EVERY {
            self.last_trim = Instant::now();
            // Exit records can be lost (a full ring), or never sent (a thread id reused while
            // its predecessor's totals were still in the kernel map): look in /proc.
            if self.model.counters.rare_drops > self.rare_drops_seen
                || self.last_gc.elapsed() >= GC_EVERY
            {
                self.rare_drops_seen = self.model.counters.rare_drops;
                self.last_gc = Instant::now();
                let gone: Vec<u32> = self
                    .model
                    .live_threads()
                    .filter(|(tid, tgid)| {
                        !std::path::Path::new(&format!("/proc/{tgid}/task/{tid}")).exists()
                    })
                    .map(|(tid, _)| tid)
                    .collect();
                let at = Instant::now();
                self.pending_exits
                    .extend(gone.into_iter().map(|tid| (at, tid)));
            }
            self.model.shrink();
            self.printer.shrink();
            super::give_back_heap();
        }
    }

    pub(super) fn retire_exited(&mut self, out: &mut dyn Write, all: bool) -> Result<()> {
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) = self
            .pending_exits
            .drain(..)
            .partition(|(t, _)| all || *t <= now);
        self.pending_exits = keep;
        if due.is_empty() {
            return Ok(());
        }
        self.sweep(out)?;
        for (_, tid) in due {
            for (t, memcg_id) in self.model.keys_of_thread(tid) {
                let _ = self.charges.remove(&ChargeKey {
                    tid: t,
                    _pad: 0,
                    memcg_id,
                });
            }
            self.feed(ModelInput::Forget(tid));
            self.printer.forget(tid);
        }

        Ok(())
    }
}
