//! oomtrace inside other kernels: the release binary and its libraries go into a busybox
//! initramfs, a stock Debian 6.1 cloud kernel boots it under qemu, and `oomtrace doctor --json`
//! runs inside: what an older kernel offers (kprobes, fentry, BTF, cgroup v2; no memcg
//! tracepoints before 6.14) is seen, and the kernel-function tiers are planned.
use std::process::Stdio;

use anyhow::{Context as _, Result};
use serde_json::Value;
use tests::{guest, oomtrace_bin, require_root};

#[test]
fn doctor_in_a_debian_6_1_guest_plans_the_kernel_function_tiers() -> Result<()> {
    if !require_root("doctor_in_a_debian_6_1_guest_plans_the_kernel_function_tiers") {
        return Ok(());
    }
    guest::ensure_tools()?;
    let kernel = guest::debian_cloud_kernel()?;
    let bin = oomtrace_bin()?;
    let init = format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         mount -t cgroup2 none /sys/fs/cgroup\n\
         echo OOMTRACE-DOCTOR-BEGIN\n{bin} doctor --json\necho OOMTRACE-DOCTOR-END\n\
         {bin} tail --duration 1 2>&1 | sed 's/^/TAIL: /'\n\
         poweroff -f\n",
        bin = bin.display()
    );
    let initrd = guest::initramfs_with("vm-doctor", &init, &[bin.as_path()], &[])?;
    let out = guest::qemu_command(&kernel, &initrd, "quiet loglevel=0")
        .args(["-m", "512"])
        .stdin(Stdio::null())
        .output()?;
    let console = String::from_utf8_lossy(&out.stdout);
    let json = console
        .split("OOMTRACE-DOCTOR-BEGIN")
        .nth(1)
        .and_then(|s| s.split("OOMTRACE-DOCTOR-END").next())
        .with_context(|| format!("no doctor output from the guest: {console}"))?;
    let d: Value = serde_json::from_str(json.trim())
        .with_context(|| format!("doctor did not print JSON: {json}"))?;
    assert!(
        d["kernel"]
            .as_str()
            .is_some_and(|k| k.starts_with("6.1.0-")),
        "{}",
        d["kernel"]
    );
    assert_eq!(d["btf"], true, "{d}");
    assert_eq!(d["memory_controller"]["Ok"][0], "V2", "{d}");
    assert_eq!(d["kprobes"], true, "{d}");
    // Asked of the kernel itself: both load and attach on try_charge_memcg there.
    assert!(
        d["kernel_functions"]["fentry"].get("Ok").is_some(),
        "fentry: {}",
        d["kernel_functions"]
    );
    assert!(
        d["kernel_functions"]["kprobe"].get("Ok").is_some(),
        "kprobe: {}",
        d["kernel_functions"]
    );
    let charge = d["hooks"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["hook"] == "charge"))
        .context("charge hook")?;
    // No memcg:mod_memcg_lruvec_state before 6.14: the kernel-function tier serves charges.
    assert_eq!(charge["tier"], "kprobe", "{charge}");
    assert_eq!(charge["target"], "try_charge_memcg", "{charge}");
    let oom = d["hooks"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["hook"] == "oom"))
        .context("oom hook")?;
    assert_eq!(oom["tier"], "fentry", "{oom}");
    // And the collector starts on it (the kernel matrix, vm_matrix.rs, checks what it sees).
    let tail: Vec<&str> = console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("TAIL: "))
        .collect();
    assert!(
        tail.iter().any(|l| l.contains("summary:")),
        "tail did not run: {tail:?}"
    );
    Ok(())
}
