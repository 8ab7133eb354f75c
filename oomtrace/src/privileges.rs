//! Least privilege after start. Loading and attaching the programs needs nearly all of root;
//! what a running collector still does needs four capabilities. Once the programs are attached
//! and the maps open, `tail`, `record` and `agent` keep those and drop every other one from all
//! their sets (the bounding set too where CAP_SETPCAP allows, and no-new-privs), so neither a
//! bug nor an exec can bring them back.
//!
//! Capabilities are per thread: this runs on the collector's one thread (a current-thread
//! runtime) before any other is started, and threads made later inherit the reduced sets.
use caps::{CapSet, Capability, CapsHashSet};
use serde::Serialize;

/// What the collector still does after start, and the capability each needs.
pub const STILL_NEEDED: &[(Capability, &str)] = &[
    (
        Capability::CAP_BPF,
        "map reads; the guest RAM programs are loaded when a first VM appears",
    ),
    (
        Capability::CAP_PERFMON,
        "attaching those tracing programs then",
    ),
    (
        Capability::CAP_SYS_PTRACE,
        "reading a qemu's /proc/PID/maps and smaps (it runs as another user)",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "reading container bundles owned by other users, for pod names",
    ),
];

/// Kernels older than 5.8 know neither CAP_BPF nor CAP_PERFMON: CAP_SYS_ADMIN does their work.
/// It is kept too where a program still to be attached opens a perf event and the kernel
/// allows that only to CAP_SYS_ADMIN (Debian's perf_event_paranoid 3).
const SYS_ADMIN: Capability = Capability::CAP_SYS_ADMIN;

/// Debian's kernels (a patch upstream does not have) refuse perf events to all but
/// CAP_SYS_ADMIN at paranoid 3; upstream treats anything above 2 as 2.
pub fn perf_events_need_sys_admin() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(|p| p > 2)
}

#[derive(Clone, Debug, Serialize)]
pub struct Kept {
    /// The capabilities still held (effective = permitted = bounding), by name.
    pub kept: Vec<String>,
    /// How many this process held and gave up.
    pub dropped: usize,
}

impl Kept {
    pub fn describe(&self) -> String {
        if self.kept.is_empty() {
            return "no capabilities held".to_string();
        }
        format!(
            "keeping {} (every other capability dropped)",
            self.kept.join(", ")
        )
    }
}

/// What `drop_to_still_needed` keeps on a kernel (of what the process holds), and why.
pub fn still_needed_why(
    supported: &CapsHashSet,
    perf_event_to_open: bool,
) -> Vec<(Capability, &'static str)> {
    let mut keep: Vec<(Capability, &'static str)> = STILL_NEEDED
        .iter()
        .filter(|(c, _)| supported.contains(c))
        .copied()
        .collect();
    if !supported.contains(&Capability::CAP_BPF) {
        keep.push((
            SYS_ADMIN,
            "this kernel has no CAP_BPF / CAP_PERFMON (before 5.8)",
        ));
    } else if perf_event_to_open {
        keep.push((
            SYS_ADMIN,
            "a hook attached later opens a perf event, which this kernel gives only to it",
        ));
    }
    keep
}

pub fn still_needed(supported: &CapsHashSet, perf_event_to_open: bool) -> CapsHashSet {
    still_needed_why(supported, perf_event_to_open)
        .into_iter()
        .map(|(c, _)| c)
        .collect()
}

/// Drops every capability the running collector does not need; `perf_event_to_open`: a
/// program still to be attached opens a perf event on a kernel that wants CAP_SYS_ADMIN for
/// it. Errors say which step failed; a process that holds fewer capabilities than it would
/// keep simply keeps what it has.
pub fn drop_to_still_needed(perf_event_to_open: bool) -> Result<Kept, caps::errors::CapsError> {
    let supported = caps::runtime::thread_all_supported();
    let held = caps::read(None, CapSet::Permitted)?;
    let keep: CapsHashSet = still_needed(&supported, perf_event_to_open)
        .intersection(&held)
        .copied()
        .collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes with the rest. A
    // process started without it (the DaemonSet's drop-ALL-then-add set) keeps its bounding set;
    // no-new-privs below then stops an exec from gaining anything.
    if held.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::read(None, CapSet::Bounding)? {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers and only restricts us.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        log::warn!(
            "cannot set no-new-privs: {}",
            std::io::Error::last_os_error()
        );
    }
    let mut kept: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
    kept.sort();
    Ok(Kept {
        kept,
        dropped: held.len().saturating_sub(keep.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_without_cap_bpf_keep_sys_admin_in_its_place() {
        let mut supported = caps::all();
        let modern = still_needed(&supported, false);
        assert!(modern.contains(&Capability::CAP_BPF));
        assert!(!modern.contains(&Capability::CAP_SYS_ADMIN));
        assert_eq!(modern.len(), STILL_NEEDED.len());
        assert!(still_needed(&supported, true).contains(&Capability::CAP_SYS_ADMIN));
        supported.remove(&Capability::CAP_BPF);
        supported.remove(&Capability::CAP_PERFMON);
        let old = still_needed(&supported, false);
        assert!(old.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!old.contains(&Capability::CAP_BPF));
    }
}
