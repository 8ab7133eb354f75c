//! Which part of a KubeVirt VM pod a thread belongs to, from names alone.
//!
//! The same table serves the live tool (thread comm + process comm) and `explain` (the kernel's
//! task table has only process names cut to 15 characters; the invoker line has a thread comm).
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThreadClass {
    /// qemu "CPU N/KVM" or "CPU N/TCG": runs the guest; its guest-fault charges are guest RAM.
    Vcpu,
    /// qemu "IO <name>" threads, including "IO mon_iothread".
    Iothread,
    /// qemu's thread-pool `worker` threads: block I/O with aio=threads (the guest's disk writes
    /// through the host page cache are charged here).
    QemuWorker,
    /// qemu's migration threads (live_migration, multifd send/recv, mig/..., return path).
    Migration,
    /// qemu's main thread and its other helpers (vnc_worker, call_rcu, ...).
    QemuOther,
    /// `vhost-<qemu pid>`: in-kernel virtio (net, vsock) for the VM; a kernel thread charging
    /// qemu's memcg before Linux 6.4, a thread of qemu since.
    Vhost,
    VirtLauncher,
    VirtLauncherMonitor,
    /// virtqemud, or libvirtd on older KubeVirt.
    Virtqemud,
    Virtlogd,
    /// virtiofsd: the shared-filesystem daemon of a VM with virtiofs.
    Virtiofsd,
    /// The user-mode network helpers: passt / pasta, slirp4netns.
    NetHelper,
    /// swtpm: the VM's software TPM.
    Swtpm,
    /// The pod's own plumbing: pause, virt-tail, virt-freezer.
    PodInfra,
    /// Anything else in the pod: someone exec'd in (memhold, sh, a debugger, ...).
    Foreign,
    /// Kernel threads charging on the cgroup's behalf (kworker, kswapd, ...).
    Kernel,
}

impl ThreadClass {
    pub const ALL: [ThreadClass; 16] = [
        Self::Vcpu,
        Self::Iothread,
        Self::QemuWorker,
        Self::Migration,
        Self::QemuOther,
        Self::Vhost,
        Self::VirtLauncher,
        Self::VirtLauncherMonitor,
        Self::Virtqemud,
        Self::Virtlogd,
        Self::Virtiofsd,
        Self::NetHelper,
        Self::Swtpm,
        Self::PodInfra,
        Self::Foreign,
        Self::Kernel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Vcpu => "vcpu",
            Self::Iothread => "iothread",
            Self::QemuWorker => "qemu-worker",
            Self::Migration => "migration",
            Self::QemuOther => "qemu-other",
            Self::Vhost => "vhost",
            Self::VirtLauncher => "virt-launcher",
            Self::VirtLauncherMonitor => "virt-launcher-monitor",
            Self::Virtqemud => "virtqemud",
            Self::Virtlogd => "virtlogd",
            Self::Virtiofsd => "virtiofsd",
            Self::NetHelper => "net-helper",
            Self::Swtpm => "swtpm",
            Self::PodInfra => "pod-infra",
            Self::Foreign => "foreign",
            Self::Kernel => "kernel",
        }
    }

    /// Position in `ALL`, for per-class arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// What a process of this class is, in a sentence.
    pub fn as_process(self) -> &'static str {
        match self {
            Self::Vcpu | Self::Iothread | Self::QemuWorker | Self::Migration | Self::QemuOther => {
                "the VM's qemu"
            }
            Self::Vhost => "the VM's vhost worker",
            Self::VirtLauncher => "KubeVirt's virt-launcher",
            Self::VirtLauncherMonitor => "KubeVirt's virt-launcher-monitor",
            Self::Virtqemud => "libvirt's daemon",
            Self::Virtlogd => "libvirt's log daemon",
            Self::Virtiofsd => "the VM's virtiofs daemon",
            Self::NetHelper => "the VM's user-mode network helper",
            Self::Swtpm => "the VM's software TPM",
            Self::PodInfra => "pod infrastructure",
            Self::Foreign => "a process foreign to KubeVirt",
            Self::Kernel => "a kernel thread",
        }
    }

    /// Part of the qemu process (guest RAM lives here).
    pub fn is_qemu(self) -> bool {
        matches!(
            self,
            Self::Vcpu | Self::Iothread | Self::QemuWorker | Self::Migration | Self::QemuOther
        )
    }
}

impl std::fmt::Display for ThreadClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a name is matched. Process names may be cut by the kernel to 15 characters
/// (TASK_COMM_LEN - 1), so `Process` entries also match their 15-character prefix.
enum Rule {
    /// The process (main thread comm or executable basename) is exactly this.
    Process(&'static str),
    /// The process name starts with this.
    ProcessPrefix(&'static str),
    /// The thread comm starts with this (and, when the process is known, it is qemu).
    QemuThreadPrefix(&'static str),
    /// A kernel thread's comm starts with this.
    KernelThreadPrefix(&'static str),
    /// `vhost-<digits>`, a kernel thread or a thread of qemu.
    Vhost,
}

/// First match wins; order matters (monitor before launcher, vCPU before other qemu threads).
const TABLE: &[(Rule, ThreadClass)] = &[
    (Rule::QemuThreadPrefix("CPU "), ThreadClass::Vcpu),
    (Rule::QemuThreadPrefix("IO "), ThreadClass::Iothread),
    (Rule::QemuThreadPrefix("worker"), ThreadClass::QemuWorker),
    (
        Rule::QemuThreadPrefix("live_migration"),
        ThreadClass::Migration,
    ),
    (Rule::QemuThreadPrefix("multifd"), ThreadClass::Migration),
    (Rule::QemuThreadPrefix("mig/"), ThreadClass::Migration),
    (
        Rule::QemuThreadPrefix("return path"),
        ThreadClass::Migration,
    ),
    (Rule::QemuThreadPrefix("postcopy/"), ThreadClass::Migration),
    (Rule::Vhost, ThreadClass::Vhost),
    (Rule::ProcessPrefix("qemu-system-"), ThreadClass::QemuOther),
    (Rule::Process("qemu-kvm"), ThreadClass::QemuOther),
    (
        Rule::Process("virt-launcher-monitor"),
        ThreadClass::VirtLauncherMonitor,
    ),
    (Rule::Process("virt-launcher"), ThreadClass::VirtLauncher),
    (Rule::Process("virtqemud"), ThreadClass::Virtqemud),
    (Rule::Process("libvirtd"), ThreadClass::Virtqemud),
    (Rule::Process("virtlogd"), ThreadClass::Virtlogd),
    (Rule::Process("virtiofsd"), ThreadClass::Virtiofsd),
    (Rule::ProcessPrefix("passt"), ThreadClass::NetHelper),
    (Rule::Process("pasta"), ThreadClass::NetHelper),
    (Rule::Process("slirp4netns"), ThreadClass::NetHelper),
    (Rule::Process("swtpm"), ThreadClass::Swtpm),
    (Rule::Process("pause"), ThreadClass::PodInfra),
    (Rule::Process("virt-tail"), ThreadClass::PodInfra),
    (Rule::Process("virt-freezer"), ThreadClass::PodInfra),
    (Rule::KernelThreadPrefix("kworker"), ThreadClass::Kernel),
    (Rule::KernelThreadPrefix("kswapd"), ThreadClass::Kernel),
    (Rule::KernelThreadPrefix("kcompactd"), ThreadClass::Kernel),
    (Rule::KernelThreadPrefix("khugepaged"), ThreadClass::Kernel),
    (Rule::KernelThreadPrefix("ksoftirqd"), ThreadClass::Kernel),
    (Rule::KernelThreadPrefix("oom_reaper"), ThreadClass::Kernel),
    // Charges made for a memcg while another memcg's task ran (oomtrace's pseudo-thread of a
    // memcg: a receive in softirq), and on an idle CPU (its idle task: interrupt work too).
    (Rule::KernelThreadPrefix("[interrupt]"), ThreadClass::Kernel),
    (Rule::KernelThreadPrefix("swapper/"), ThreadClass::Kernel),
];

/// What is known about a thread. Any field may be empty/None (the kernel log knows only one name).
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadNames<'a> {
    pub thread: &'a str,
    /// The process's comm (its main thread's name), possibly cut to 15 characters.
    pub process: &'a str,
    /// The process's executable path, when /proc showed it.
    pub exe: Option<&'a str>,
    /// Known to be a kernel thread (no mm). None: unknown.
    pub kernel_thread: Option<bool>,
}

fn is_qemu_process(name: &str) -> bool {
    name.starts_with("qemu-system-") || name == "qemu-kvm"
}

fn process_matches(want: &str, got: &str) -> bool {
    !got.is_empty() && (got == want || (got.len() == 15 && want.starts_with(got)))
}

/// A vCPU thread name: "CPU <n>/KVM" or "CPU <n>/TCG" (qemu with debug-threads=on).
pub fn is_vcpu_name(thread: &str) -> bool {
    let Some(rest) = thread.strip_prefix("CPU ") else {
        return false;
    };
    let Some((n, accel)) = rest.split_once('/') else {
        return false;
    };
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && matches!(accel, "KVM" | "TCG")
}

/// A vCPU run by qemu's software emulator: all its anonymous charges are guest RAM.
pub fn is_tcg_vcpu(thread: &str) -> bool {
    is_vcpu_name(thread) && thread.ends_with("/TCG")
}

pub fn classify(n: ThreadNames<'_>) -> ThreadClass {
    let exe_base = n.exe.and_then(|e| e.rsplit('/').next()).unwrap_or("");
    let process_known = !(n.process.is_empty() && exe_base.is_empty());
    // Known only by a thread comm (the kernel's invoker line): it may be a main thread, so the
    // comm also stands for the process.
    let process = if process_known { n.process } else { n.thread };
    let names = [process, exe_base];
    let in_qemu = names.iter().any(|p| is_qemu_process(p));
    for (rule, class) in TABLE {
        let hit = match rule {
            Rule::QemuThreadPrefix(prefix) => {
                n.thread.starts_with(prefix)
                    && (in_qemu || !process_known)
                    && (*class != ThreadClass::Vcpu || is_vcpu_name(n.thread))
            }
            Rule::Process(name) => names.iter().any(|p| process_matches(name, p)),
            Rule::ProcessPrefix(prefix) => names.iter().any(|p| p.starts_with(prefix)),
            Rule::Vhost => {
                let named = n
                    .thread
                    .strip_prefix("vhost-")
                    .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
                named && (in_qemu || n.kernel_thread != Some(false) || !process_known)
            }
            Rule::KernelThreadPrefix(prefix) => {
                n.kernel_thread != Some(false)
                    && (n.thread.starts_with(prefix) || process.starts_with(prefix))
            }
        };
        if hit {
            return *class;
        }
    }
    if n.kernel_thread == Some(true) {
        ThreadClass::Kernel
    } else {
        ThreadClass::Foreign
    }
}

/// Classify a process by name only (the kernel's OOM task table).
pub fn classify_process(name: &str) -> ThreadClass {
    classify(ThreadNames {
        process: name,
        ..Default::default()
    })
}

/// Classify a thread known only by its comm (the kernel's "X invoked oom-killer" line).
pub fn classify_thread_comm(comm: &str) -> ThreadClass {
    classify(ThreadNames {
        thread: comm,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(thread: &str, process: &str) -> ThreadClass {
        classify(ThreadNames {
            thread,
            process,
            ..Default::default()
        })
    }

    #[test]
    fn qemu_threads_from_the_seed_thread_list_get_their_classes() {
        let p = "qemu-system-x86";
        for (comm, want) in [
            ("qemu-system-x86", ThreadClass::QemuOther),
            ("IO iothread1", ThreadClass::Iothread),
            ("IO mon_iothread", ThreadClass::Iothread),
            ("CPU 0/KVM", ThreadClass::Vcpu),
            ("CPU 11/KVM", ThreadClass::Vcpu),
            ("CPU 1/TCG", ThreadClass::Vcpu),
            ("vnc_worker", ThreadClass::QemuOther),
            ("call_rcu", ThreadClass::QemuOther),
            ("worker", ThreadClass::QemuWorker),
            ("live_migration", ThreadClass::Migration),
            ("multifdsend_0", ThreadClass::Migration),
            ("mig/src/send_1", ThreadClass::Migration),
            ("vhost-4242", ThreadClass::Vhost),
        ] {
            assert_eq!(thread(comm, p), want, "{comm}");
        }
    }

    #[test]
    fn kubevirt_processes_match_full_and_cut_names() {
        for (name, want) in [
            ("virt-launcher", ThreadClass::VirtLauncher),
            ("virt-launcher-monitor", ThreadClass::VirtLauncherMonitor),
            ("virt-launcher-m", ThreadClass::VirtLauncherMonitor),
            ("virtqemud", ThreadClass::Virtqemud),
            ("libvirtd", ThreadClass::Virtqemud),
            ("virtlogd", ThreadClass::Virtlogd),
            ("pause", ThreadClass::PodInfra),
            ("qemu-system-x86", ThreadClass::QemuOther),
            ("qemu-kvm", ThreadClass::QemuOther),
            ("memhold", ThreadClass::Foreign),
            ("sh", ThreadClass::Foreign),
            ("virtiofsd", ThreadClass::Virtiofsd),
            ("passt.avx2", ThreadClass::NetHelper),
            ("slirp4netns", ThreadClass::NetHelper),
            ("swtpm", ThreadClass::Swtpm),
            ("kworker/u8:3", ThreadClass::Kernel),
            ("[interrupt]", ThreadClass::Kernel),
            ("swapper/1", ThreadClass::Kernel),
            ("", ThreadClass::Foreign),
        ] {
            assert_eq!(classify_process(name), want, "{name}");
        }
    }

    #[test]
    fn invoker_comm_alone_is_classified_as_thread_or_process() {
        assert_eq!(classify_thread_comm("CPU 11/KVM"), ThreadClass::Vcpu);
        assert_eq!(
            classify_thread_comm("virt-launcher"),
            ThreadClass::VirtLauncher
        );
        assert_eq!(classify_thread_comm("IO iothread1"), ThreadClass::Iothread);
        assert_eq!(classify_thread_comm("memhold"), ThreadClass::Foreign);
    }

    #[test]
    fn qemu_like_thread_names_outside_qemu_are_not_vcpus() {
        assert_eq!(thread("CPU 0/KVM", "memhold"), ThreadClass::Foreign);
        assert_eq!(thread("IO worker", "virtqemud"), ThreadClass::Virtqemud);
        assert_eq!(
            thread("CPU x/KVM", "qemu-system-x86"),
            ThreadClass::QemuOther
        );
        assert_eq!(
            thread("CPU 0/HVF", "qemu-system-x86"),
            ThreadClass::QemuOther
        );
    }

    #[test]
    fn executable_path_identifies_a_renamed_main_thread() {
        let n = ThreadNames {
            thread: "rpc-worker",
            process: "rpc-worker",
            exe: Some("/usr/sbin/virtqemud"),
            kernel_thread: Some(false),
        };
        assert_eq!(classify(n), ThreadClass::Virtqemud);
    }

    #[test]
    fn kernel_threads_are_kernel_only_when_not_known_user() {
        let k = ThreadNames {
            thread: "kworker/1:2",
            process: "kworker/1:2",
            exe: None,
            kernel_thread: Some(true),
        };
        assert_eq!(classify(k), ThreadClass::Kernel);
        let user = ThreadNames {
            kernel_thread: Some(false),
            ..k
        };
        assert_eq!(classify(user), ThreadClass::Foreign);
        let odd = ThreadNames {
            thread: "flush",
            process: "flush",
            exe: None,
            kernel_thread: Some(true),
        };
        assert_eq!(classify(odd), ThreadClass::Kernel);
    }

    #[test]
    fn vhost_workers_are_the_kernel_threads_before_6_4_and_qemu_threads_since() {
        let kthread = ThreadNames {
            thread: "vhost-4242",
            process: "vhost-4242",
            exe: None,
            kernel_thread: Some(true),
        };
        assert_eq!(classify(kthread), ThreadClass::Vhost);
        assert_eq!(thread("vhost-4242", "qemu-system-x86"), ThreadClass::Vhost);
        assert_eq!(classify_thread_comm("vhost-4242"), ThreadClass::Vhost);
        // A user process that names a thread so is not a vhost worker.
        let user = ThreadNames {
            kernel_thread: Some(false),
            process: "memhold",
            ..kthread
        };
        assert_eq!(classify(user), ThreadClass::Foreign);
        assert_eq!(thread("vhost-x", "qemu-system-x86"), ThreadClass::QemuOther);
        assert_eq!(thread("worker", "virtqemud"), ThreadClass::Virtqemud);
    }

    #[test]
    fn index_is_the_position_in_all() {
        for (i, c) in ThreadClass::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
    }

    #[test]
    fn tcg_vcpus_are_recognised_by_suffix() {
        assert!(is_tcg_vcpu("CPU 3/TCG"));
        assert!(!is_tcg_vcpu("CPU 3/KVM"));
        assert!(!is_tcg_vcpu("CPU /TCG"));
    }
}
