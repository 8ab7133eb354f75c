//! oomtrace inside other kernels: the release binary and its libraries go into a busybox
//! initramfs, a stock Debian 6.1 cloud kernel boots it under qemu, and `oomtrace doctor --json`
//! runs inside. The first step of the kernel matrix: what an older kernel offers (kprobes, BTF,
//! cgroup v2; no memcg tracepoints before 6.10) is seen and said, and `tail` refuses in one line.
use std::process::Stdio;

use anyhow::{Context as _, Result};
use serde_json::Value;
use tests::{guest, oomtrace_bin, require_root};

#[test]
fn doctor_in_a_debian_6_1_guest_sees_fentry_kprobes_and_the_missing_memcg_tracepoint() -> Result<()>
{
    if !require_root(
        "doctor_in_a_debian_6_1_guest_sees_fentry_kprobes_and_the_missing_memcg_tracepoint",
    ) {
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
    let initrd = guest::initramfs_with("vm-doctor", &init, &[bin.as_path()])?;
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
    assert_eq!(
        charge["tier"], "off",
        "6.1 has no memcg:mod_memcg_lruvec_state"
    );
    assert!(
        charge["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not available")),
        "{charge}"
    );
    // And the collector says, in one line, what it misses on this kernel (until the kprobe tier).
    let tail: Vec<&str> = console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("TAIL: "))
        .collect();
    assert_eq!(tail.len(), 1, "{tail:?}");
    assert!(
        tail[0].contains("memcg:mod_memcg_lruvec_state") && tail[0].contains("charge"),
        "{tail:?}"
    );
    Ok(())
}
