//! The memory overhead KubeVirt reserves for a VM pod, item by item, so observed overhead per
//! class can be set against it (kubevirt pkg/virt-controller/services: GetMemoryOverhead).
use serde::Serialize;

use super::class::ThreadClass;

const MI: u64 = 1 << 20;

/// The fixed per-process constants changed between KubeVirt releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Constants {
    pub name: &'static str,
    pub virt_launcher_monitor: u64,
    pub virt_launcher: u64,
    pub virtlogd: u64,
    /// virtqemud, or libvirtd before KubeVirt moved to the split daemons.
    pub virtqemud: u64,
    pub qemu: u64,
}

pub const KUBEVIRT_CURRENT: Constants = Constants {
    name: "kubevirt-1.4+",
    virt_launcher_monitor: 25 * MI,
    virt_launcher: 100 * MI,
    virtlogd: 25 * MI,
    virtqemud: 40 * MI,
    qemu: 30 * MI,
};

/// The constants quoted in the seed for the KubeVirt of Harvester v1.3.
pub const KUBEVIRT_1_1: Constants = Constants {
    name: "kubevirt-1.1",
    virt_launcher_monitor: 25 * MI,
    virt_launcher: 100 * MI,
    virtlogd: 20 * MI,
    virtqemud: 35 * MI,
    qemu: 30 * MI,
};

/// KubeVirt v0.54 (Harvester v1.2.1), with libvirtd.
pub const KUBEVIRT_0_54: Constants = Constants {
    name: "kubevirt-0.54",
    virt_launcher_monitor: 25 * MI,
    virt_launcher: 75 * MI,
    virtlogd: 17 * MI,
    virtqemud: 33 * MI,
    qemu: 30 * MI,
};

pub const PROFILES: [Constants; 3] = [KUBEVIRT_CURRENT, KUBEVIRT_1_1, KUBEVIRT_0_54];

/// Harvester >= 1.4 sets additional-guest-memory-overhead-ratio to 1.5 by default.
pub const HARVESTER_RATIO: f64 = 1.5;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct VmShape {
    pub guest_memory: u64,
    pub vcpus: u32,
    /// KubeVirt adds 16Mi of video RAM unless autoattachGraphicsDevice is false.
    pub graphics: bool,
}

/// One line of the budget: which classes it covers and what is reserved for them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BudgetItem {
    pub name: &'static str,
    pub classes: Vec<ThreadClass>,
    pub reserved: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Budget {
    pub constants: &'static str,
    pub ratio: f64,
    pub items: Vec<BudgetItem>,
    pub total: u64,
}

fn scaled(bytes: u64, ratio: f64) -> u64 {
    (bytes as f64 * ratio).round() as u64
}

/// KubeVirt's overhead for `vm`: per-process constants; for qemu also page tables (guest/512),
/// 8Mi per vCPU, 8Mi for IOThreads and 16Mi video; all times `ratio`. Processes KubeVirt does
/// not know about (anything exec'd into the pod) get no budget at all.
pub fn compute(vm: &VmShape, k: &Constants, ratio: f64) -> Budget {
    let qemu = k.qemu
        + vm.guest_memory / 512
        + 8 * MI * u64::from(vm.vcpus)
        + 8 * MI
        + if vm.graphics { 16 * MI } else { 0 };
    use ThreadClass as C;
    let table: [(&'static str, &[ThreadClass], u64); 6] = [
        (
            "virt-launcher-monitor",
            &[C::VirtLauncherMonitor],
            k.virt_launcher_monitor,
        ),
        ("virt-launcher", &[C::VirtLauncher], k.virt_launcher),
        ("virtqemud", &[C::Virtqemud], k.virtqemud),
        ("virtlogd", &[C::Virtlogd], k.virtlogd),
        (
            "qemu overhead",
            &[
                C::Vcpu,
                C::Iothread,
                C::QemuWorker,
                C::Migration,
                C::QemuOther,
                C::Vhost,
            ],
            qemu,
        ),
        // Daemons a VM may bring (virtiofs, passt, a TPM) have no line in this formula.
        (
            "not reserved",
            &[
                C::Virtiofsd,
                C::NetHelper,
                C::Swtpm,
                C::PodInfra,
                C::Foreign,
                C::Kernel,
            ],
            0,
        ),
    ];
    let items: Vec<BudgetItem> = table
        .iter()
        .map(|(name, classes, bytes)| BudgetItem {
            name,
            classes: classes.to_vec(),
            reserved: scaled(*bytes, ratio),
        })
        .collect();
    let total = items.iter().map(|i| i.reserved).sum();
    Budget {
        constants: k.name,
        ratio,
        items,
        total,
    }
}

/// The seed's proposed Harvester reserved memory by guest size (on top of KubeVirt's overhead).
pub fn seed_reserved_table(guest_memory: u64) -> u64 {
    let gib = guest_memory as f64 / (1u64 << 30) as f64;
    if gib >= 10.0 {
        1024 * MI
    } else if gib >= 5.0 {
        512 * MI
    } else if gib > 1.0 {
        384 * MI
    } else {
        256 * MI
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_adds_kubevirts_terms_for_a_2_vcpu_2_gib_vm() {
        let vm = VmShape {
            guest_memory: 2 << 30,
            vcpus: 2,
            graphics: true,
        };
        let b = compute(&vm, &KUBEVIRT_CURRENT, 1.0);
        // 25 + 100 + 40 + 25 + (30 + 4 + 16 + 8 + 16) Mi
        assert_eq!(b.total, (25 + 100 + 40 + 25 + 30 + 4 + 16 + 8 + 16) * MI);
        let q = b.items.iter().find(|i| i.name == "qemu overhead").unwrap();
        assert_eq!(q.reserved, (30 + 4 + 16 + 8 + 16) * MI);
    }

    #[test]
    fn ratio_scales_every_item_and_foreign_gets_nothing() {
        let vm = VmShape {
            guest_memory: 1 << 30,
            vcpus: 1,
            graphics: false,
        };
        let one = compute(&vm, &KUBEVIRT_0_54, 1.0);
        let more = compute(&vm, &KUBEVIRT_0_54, HARVESTER_RATIO);
        assert_eq!(more.total, scaled(one.total, 1.5));
        assert!(
            more.items
                .iter()
                .any(|i| i.classes.contains(&ThreadClass::Foreign) && i.reserved == 0)
        );
        // Every class is covered by exactly one item.
        for c in ThreadClass::ALL {
            assert_eq!(
                one.items.iter().filter(|i| i.classes.contains(&c)).count(),
                1,
                "{c}"
            );
        }
    }

    #[test]
    fn seed_table_steps_at_its_boundaries() {
        assert_eq!(seed_reserved_table(1 << 30), 256 * MI);
        assert_eq!(seed_reserved_table(2 << 30), 384 * MI);
        assert_eq!(seed_reserved_table(5 << 30), 512 * MI);
        assert_eq!(seed_reserved_table(16 << 30), 1024 * MI);
    }
}
