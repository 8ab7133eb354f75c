//! What a process that sends a kill signal is, from its name (the thread's comm, cut to 15
//! characters by the kernel): so a kill by kubelet's eviction, a container runtime stopping a
//! container or a userspace OOM killer reads as such next to the kernel's own OOM kills.

/// (name prefix, kind), first match wins; names as the kernel shows them (15 characters).
const KINDS: &[(&str, &str)] = &[
    ("kubelet", "kubelet"),
    ("containerd-shim", "container runtime"),
    ("containerd", "container runtime"),
    ("runc", "container runtime"),
    ("crun", "container runtime"),
    ("conmon", "container runtime"),
    ("crio", "container runtime"),
    ("dockerd", "container runtime"),
    ("podman", "container runtime"),
    ("systemd-oomd", "userspace OOM killer"),
    ("earlyoom", "userspace OOM killer"),
    ("oomd", "userspace OOM killer"),
    ("nohang", "userspace OOM killer"),
    ("low-memory-moni", "userspace OOM killer"),
    ("virt-launcher", "KubeVirt"),
    ("virt-handler", "KubeVirt"),
    ("virtqemud", "KubeVirt"),
    ("libvirtd", "KubeVirt"),
    ("systemd", "systemd"),
];

pub fn kind(comm: &str) -> &'static str {
    KINDS
        .iter()
        .find(|(prefix, _)| comm.starts_with(prefix))
        .map_or("other", |(_, kind)| kind)
}

#[cfg(test)]
mod tests {
    use super::kind;

    #[test]
    fn senders_are_told_by_name() {
        for (comm, want) in [
            ("kubelet", "kubelet"),
            ("containerd-shim", "container runtime"),
            ("systemd-oomd", "userspace OOM killer"),
            ("systemd", "systemd"),
            ("virt-launcher-m", "KubeVirt"),
            ("bash", "other"),
            ("", "other"),
        ] {
            assert_eq!(kind(comm), want, "{comm}");
        }
    }
}
