//! What the collector reads about processes from /proc, and qemu guest RAM registration.
use std::{collections::HashSet, io::Write};

use anyhow::Result;
use oomtrace_common::GuestRanges;

use super::Live;

/// smaps reads of a new guest RAM mapping while its guest faults fast (see register_guest_ram).
const GUEST_READ_TRIES: usize = 10;
use crate::{
    bpf,
    model::{ProcessInfo, input::ModelInput},
    procfs,
};

impl Live {
    pub(super) fn learn_process(&mut self, tgid: u32) {
        self.read_process(tgid, false);
    }

    /// Process names, executable and command line from /proc; `refresh` re-reads them even
    /// when known (they change at exec).
    pub(super) fn read_process(&mut self, tgid: u32, refresh: bool) {
        if (refresh || !self.model.knows_process(tgid))
            && let Some(mut info) =
                procfs::process_info(tgid, self.clock.start_boot_ns, self.ctl.version)
        {
            if info.vm.guest_memory.is_some() {
                info.guest_ram_watched = self.guest_registered.contains(&tgid);
                if !info.guest_ram_watched {
                    self.find_guest_ram(tgid, &info);
                }
            }
            self.feed(ModelInput::Process { tgid, info });
        }
    }

    /// Looks for a qemu's guest RAM mapping; found, it is registered after the current batch
    /// of records (`register_guest_ram`); not yet mapped, it is looked for at every tick.
    fn find_guest_ram(&mut self, tgid: u32, info: &ProcessInfo) {
        let Some(guest_memory) = info.vm.guest_memory else {
            return;
        };
        let maps = std::fs::read_to_string(format!("/proc/{tgid}/maps")).unwrap_or_default();
        let found = procfs::guest_ram_ranges(&maps, guest_memory);
        if found.is_empty() {
            self.qemu_pending.insert(tgid);
            return;
        }
        self.qemu_pending.remove(&tgid);
        if !self.guest_ram_found.iter().any(|(t, _)| *t == tgid) {
            self.guest_ram_found.push((tgid, found));
        }
    }

    /// Tells the kernel programs where the guest RAM of the qemus just found is, and the model
    /// how much of it the guest had touched before: those pages were charged as overhead.
    /// Once the fault hook knows the ranges, every new page in them is tagged; the pages
    /// resident then and not tagged are the ones to move. smaps is not read in an instant (it
    /// walks the page tables while the guest may keep faulting), so the kernel's tagged count
    /// is read before and after it, and the read is repeated while they differ much.
    pub(super) fn register_guest_ram(&mut self, out: &mut dyn Write) -> Result<()> {
        if self.guest_ram_found.is_empty() {
            return Ok(());
        }
        let found = std::mem::take(&mut self.guest_ram_found);
        let mut registered = HashSet::new();
        let mut resident_untagged = Vec::new();
        for (tgid, ranges) in found {
            if self.guest_registered.contains(&tgid) || !self.install_guest_ranges(tgid, &ranges) {
                continue;
            }
            self.guest_registered.insert(tgid);
            registered.insert(tgid);
            let mut untagged = 0;
            for _ in 0..GUEST_READ_TRIES {
                let before = self.kernel_tagged_guest(tgid);
                let smaps =
                    std::fs::read_to_string(format!("/proc/{tgid}/smaps")).unwrap_or_default();
                let resident = procfs::rss_of_ranges(&smaps, &ranges) as i64;
                let after = self.kernel_tagged_guest(tgid);
                untagged = resident - (before + after) / 2;
                log::debug!(
                    "qemu {tgid}: guest RAM mapping registered, {resident} bytes resident, \
                     {before}..{after} tagged while smaps was read"
                );
                if after - before <= (resident / 200).max(256 << 10) {
                    break;
                }
            }
            resident_untagged.push((tgid, untagged.max(0)));
        }
        if registered.is_empty() {
            return Ok(());
        }
        // The totals the pages are moved within: exact, from the kernel map.
        self.sweep_where(out, |tgid| registered.contains(&tgid))?;
        for (tgid, untagged) in resident_untagged {
            let Some(mut info) = self.model.process_info(tgid).cloned() else {
                continue;
            };
            info.guest_ram_watched = true;
            self.feed(ModelInput::Process { tgid, info });
            let bytes = self.model.guest_found_at_discovery(tgid, untagged);
            if bytes > 0 {
                self.feed(ModelInput::GuestFound { tgid, bytes });
            }
        }
        Ok(())
    }

    /// Guest RAM bytes the kernel programs tagged so far for a process's live threads.
    fn kernel_tagged_guest(&mut self, tgid: u32) -> i64 {
        let entries = self.read_charge_map();
        let tagged = entries
            .iter()
            .filter(|(_, v)| v.tgid == tgid)
            .map(|(_, v)| v.totals.guest.max(0))
            .sum();
        self.charge_entries = entries;
        tagged
    }

    /// The ranges into the kernel's GUEST_RAM map, and the fault hook attached (once).
    fn install_guest_ranges(&mut self, tgid: u32, found: &[(u64, u64)]) -> bool {
        let mut r = GuestRanges::default();
        for (i, (a, b)) in found.iter().take(r.start.len()).enumerate() {
            r.start[i] = *a;
            r.end[i] = *b;
        }
        if let Err(e) = self.guest_ram.insert(&tgid, &r, 0) {
            log::warn!("cannot register qemu {tgid}'s guest RAM: {e}");
            return false;
        }
        let _ = self.guest_seen.set(0, &1, 0);
        match self.probes.attach_lazy(bpf::GUEST_RAM_HOOK) {
            Ok(attached) => attached,
            Err(e) => {
                log::warn!("cannot attach the guest RAM fault hook: {e:#}");
                false
            }
        }
    }

    pub(super) fn retry_pending_qemus(&mut self) {
        let pending: Vec<u32> = self.qemu_pending.iter().copied().collect();
        for tgid in pending {
            if !std::path::Path::new(&format!("/proc/{tgid}")).exists() {
                self.qemu_pending.remove(&tgid);
                continue;
            }
            self.read_process(tgid, true);
        }
    }
}
