//! What the collector reads about processes from /proc, and qemu guest RAM registration.
use oomtrace_common::GuestRanges;

use super::Live;
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
                info.guest_ram_watched =
                    self.guest_registered.contains(&tgid) || self.watch_guest_ram(tgid, &info);
            }
            self.feed(ModelInput::Process { tgid, info });
        }
    }

    /// Tells the kernel programs where a qemu's guest RAM is. False (and retried at every tick)
    /// while qemu has not mapped it yet.
    pub(super) fn watch_guest_ram(&mut self, tgid: u32, info: &ProcessInfo) -> bool {
        let Some(guest_memory) = info.vm.guest_memory else {
            return false;
        };
        let maps = std::fs::read_to_string(format!("/proc/{tgid}/maps")).unwrap_or_default();
        let found = procfs::guest_ram_ranges(&maps, guest_memory);
        if found.is_empty() {
            self.qemu_pending.insert(tgid);
            return false;
        }
        let mut r = GuestRanges::default();
        for (i, (a, b)) in found.iter().enumerate() {
            r.start[i] = *a;
            r.end[i] = *b;
        }
        if let Err(e) = self.guest_ram.insert(&tgid, &r, 0) {
            log::warn!("cannot register qemu {tgid}'s guest RAM: {e}");
            return false;
        }
        let _ = self.guest_seen.set(0, &1, 0);
        self.qemu_pending.remove(&tgid);
        let attached = match self.probes.attach_lazy(bpf::GUEST_RAM_HOOK) {
            Ok(attached) => attached,
            Err(e) => {
                log::warn!("cannot attach the guest RAM fault hook: {e:#}");
                false
            }
        };
        if attached {
            self.guest_registered.insert(tgid);
            // What the guest touched before now was charged untagged: the kernel's count of
            // it, read after the hook is on (pages faulted since are tagged and subtracted).
            let smaps = std::fs::read_to_string(format!("/proc/{tgid}/smaps")).unwrap_or_default();
            let resident = procfs::rss_of_ranges(&smaps, &found);
            if resident > 0 {
                self.guest_found_pending.push((tgid, resident));
            }
        }
        attached
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
