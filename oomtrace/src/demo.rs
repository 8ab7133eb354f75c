//! `oomtrace demo`: the seed's memhold experiment in a VM-pod-shaped memory cgroup. A stand-in
//! for qemu (its command line says `-name guest=default_demo-vm -m 192M`) whose "CPU 0/TCG"
//! vCPU faults in 160 MiB of guest RAM and whose "IO iothread1" takes 16 MiB, a virtiofsd
//! sidecar that shares 8 MiB of shmem (a memfd, as it shares the guest's files); then a "memhold"
//! exec'd into the pod grows until the pod's 256 MiB limit is hit and the OOM killer takes qemu.
//! Traced live, with class summaries every 3 s and the post-mortem at the kill.
use std::{
    io::Write,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    cgroupfs::MemoryController,
    collector::{self, Config, Target},
    model::Summary,
    output,
    render::By,
    scratch_cgroup::ScratchCgroup,
    workload,
};

pub const DEMO_LIMIT: u64 = 256 << 20;

/// What the demo's qemu stand-in shows in its command line, so oomtrace finds the VM's name,
/// guest memory and vCPUs as it would for a real qemu.
pub const DEMO_QEMU_ARGS: &[&str] = &[
    "-name",
    "guest=default_demo-vm,debug-threads=on",
    "-m",
    "192M",
    "-smp",
    "1",
];
const DEMO_GUEST_MIB: usize = 192;

/// Starts `oomtrace workload` (this same binary) with the given role. A qemu role runs with
/// argv[0] /usr/bin/qemu-system-x86_64 and qemu's options after `--`.
pub fn spawn_workload(
    cgroup: &str,
    process: &str,
    threads: &[&str],
    hold_secs: u64,
    start_after_secs: f64,
) -> Result<Child> {
    let exe = std::env::current_exe().context("cannot find the oomtrace executable")?;
    let qemu = process.starts_with("qemu-system-");
    let mut cmd = workload::Spec {
        process,
        cgroup,
        threads,
        hold_secs,
        start_after_secs,
        arg0: qemu.then_some("/usr/bin/qemu-system-x86_64"),
        extra: if qemu { DEMO_QEMU_ARGS } else { &[] },
        // The -m of DEMO_QEMU_ARGS: the vCPU writes into one mapping of that size, as a guest.
        guest_ram_mib: if qemu { DEMO_GUEST_MIB } else { 0 },
    }
    .command(&exe);
    cmd.stdout(Stdio::null()).stdin(Stdio::null());
    cmd.spawn().context("cannot start the workload process")
}

pub async fn run(json: bool, out: &mut dyn Write) -> Result<Summary> {
    collector::preflight(&Config::default())?;
    let ctl = MemoryController::detect()?;
    let relative = format!(
        "oomtrace-demo-{}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f1c2d3e_0000_4000_8000_0000000000de.slice",
        std::process::id()
    );
    let cg = ScratchCgroup::create(&ctl, &relative, DEMO_LIMIT)?;
    let cg_path = cg.path.display().to_string();
    if !json {
        writeln!(
            out,
            "oomtrace demo: memory cgroup {} limited to {}; starting a qemu-system-x86 stand-in for VM \
             default/demo-vm (CPU 0/TCG faults in 160 MiB of guest RAM, IO iothread1 16 MiB) and a virtiofsd \
             sidecar (8 MiB of shmem), then, after 3.5 s, a memhold that grows 48 MiB/s to 120 MiB",
            ctl.display_path(&cg.path),
            output::bytes(DEMO_LIMIT as i64)
        )?;
    }
    let cfg = Config {
        target: Target::Cgroup(cg_path.clone()),
        json,
        charges: true,
        duration: Some(Duration::from_secs(60)),
        stop_after_oom: Some(Duration::from_secs(2)),
        flush_bytes: 4 << 20,
        by: Some(By::Class),
        every: Duration::from_secs(3),
        ..Config::default()
    };
    let mut children: Vec<Child> = Vec::new();
    let mut spawn_error = None;
    let summary = collector::run(cfg, out, |_| {
        let spawned = spawn_workload(
            &cg_path,
            "qemu-system-x86",
            &["CPU 0/TCG=160@64", "IO iothread1=16@8"],
            3600,
            0.0,
        )
        .and_then(|q| {
            children.push(q);
            spawn_workload(&cg_path, "virtiofsd", &["virtiofsd=8@8/shmem"], 3600, 0.0)
        })
        .and_then(|v| {
            children.push(v);
            spawn_workload(&cg_path, "memhold", &["memhold=120@48"], 3600, 3.5)
        });
        match spawned {
            Ok(c) => children.push(c),
            Err(e) => spawn_error = Some(e),
        }
    })
    .await;
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(cg);
    if let Some(e) = spawn_error {
        return Err(e);
    }
    summary
}
