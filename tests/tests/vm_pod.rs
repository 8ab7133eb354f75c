//! A KubeVirt-shaped VM pod with a REAL qemu: qemu-system-x86_64 (TCG, debug-threads, an
//! iothread) boots a stock Debian kernel whose init fills guest RAM, next to sidecars named like
//! KubeVirt's and a memhold that grows until the pod's limit is hit, as in the seed's
//! experiment. oomtrace's guest-RAM attribution is checked against the kernel's own numbers for
//! qemu's guest RAM mapping (/proc/<pid>/smaps), memhold against the kernel's OOM report, and the
//! post-mortem against the kill the kernel made.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use oomtrace::{cgroupfs::MemoryController, scratch_cgroup::ScratchCgroup};
use serde_json::Value;
use tests::{Tail, guest, kernel_oom_report, require_root, serial, touched, within, workload_as};

const UID: &str = "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
const CID: &str = "cafe0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";
const GUEST_MIB: u64 = 600;
const FILL_MIB: u64 = 400;
const POD_LIMIT: u64 = 768 << 20;

/// The guest: fill FILL_MIB of tmpfs (guest RAM), say so on the console, then idle.
fn guest_init() -> String {
    format!(
        r#"#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs -o size={GUEST_MIB}m tmpfs /mnt
dd if=/dev/zero of=/mnt/fill bs=1M count={FILL_MIB} 2>/dev/null
echo GUEST-FILLED
while true; do sleep 60; done
"#
    )
}

/// Rss of qemu's guest RAM mapping: the anonymous mapping exactly `-m` in size.
fn guest_ram_rss(pid: u32) -> Result<u64> {
    tests::mapping_rss(pid, GUEST_MIB << 20)
}

/// Starts qemu running at once (no -S), as a VM restarted after a kill starts while oomtrace
/// traces: guest pages are touched before oomtrace finds the guest RAM mapping.
fn start_qemu(container: &str) -> Result<(Child, mpsc::Receiver<String>)> {
    guest::ensure_tools()?;
    let kernel = guest::debian_cloud_kernel()?;
    let initrd = guest::initramfs("vm-pod", &guest_init())?;
    spawn_qemu_in(
        container,
        &kernel,
        &initrd,
        &[
            "-m",
            &GUEST_MIB.to_string(),
            "-object",
            "iothread,id=iothread1",
        ],
    )
}

/// qemu (named as KubeVirt names it, `extra` arguments added) in `container`'s memcg, its
/// serial console line by line.
fn spawn_qemu_in(
    container: &str,
    kernel: &std::path::Path,
    initrd: &std::path::Path,
    extra: &[&str],
) -> Result<(Child, mpsc::Receiver<String>)> {
    let qemu = guest::qemu_command(kernel, initrd, "quiet");
    let mut args: Vec<String> = vec![qemu.get_program().to_string_lossy().into_owned()];
    args.extend(qemu.get_args().map(|a| a.to_string_lossy().into_owned()));
    args.extend(["-name", "guest=default_vm1,debug-threads=on"].map(str::to_string));
    args.extend(extra.iter().map(|a| a.to_string()));
    // Join the container's memcg first, then become qemu.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {container}/cgroup.procs && exec \"$@\""))
        .arg("sh")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start qemu")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((child, rx))
}

fn class<'a>(pm: &'a Value, name: &str) -> Option<&'a Value> {
    pm["memcg"]["classes"]
        .as_array()?
        .iter()
        .find(|c| c["class"] == name)
}

#[test]
fn real_qemu_vm_pod_guest_ram_memhold_and_post_mortem_match_the_kernel() -> Result<()> {
    if !require_root("real_qemu_vm_pod_guest_ram_memhold_and_post_mortem_match_the_kernel") {
        return Ok(());
    }
    let _serial = serial();
    let ctl = MemoryController::detect()?;
    let top = format!("oomtrace-test-vmpod-{}", std::process::id());
    let pod = ScratchCgroup::create(
        &ctl,
        &format!("{top}/kubepods/burstable/pod{UID}"),
        POD_LIMIT,
    )?;
    // The container level, without a limit of its own: the pod's limit is the one hit.
    let container = pod.path.join(CID);
    std::fs::create_dir(&container)?;
    let container_s = container.display().to_string();
    let pod_kernel_path = ctl.display_path(&pod.path);

    let mut tail = Tail::start(&[
        "--cgroup",
        &pod.path.display().to_string(),
        "--by",
        "class",
        "--every",
        "1",
    ])?;
    let mut sidecars = Vec::new();
    for (arg0, name, extra) in [
        (
            "/usr/bin/virt-launcher-monitor",
            "virt-launcher-monitor",
            &["--name", "vm1", "--namespace", "default"][..],
        ),
        (
            "/usr/bin/virt-launcher",
            "virt-launcher",
            &["--name", "vm1", "--namespace", "default"][..],
        ),
        ("/usr/sbin/virtqemud", "virtqemud", &[][..]),
        ("/usr/sbin/virtlogd", "virtlogd", &[][..]),
    ] {
        let mut c = workload_as(
            &container_s,
            name,
            &[&format!("{name}=4@40")],
            120,
            Some(arg0),
            extra,
        )?;
        touched(&mut c, 1)?;
        sidecars.push(c);
    }
    let (mut qemu, console) = start_qemu(&container_s)?;
    let qemu_pid = qemu.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut filled = false;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match console.recv_timeout(left) {
            Ok(l) if l.contains("GUEST-FILLED") => {
                filled = true;
                break;
            }
            Ok(l) if l.contains("Kernel panic") => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if !filled {
        let _ = qemu.kill();
        bail!("the guest never filled its RAM");
    }
    // Let oomtrace sweep, then read the kernel's count of qemu's guest RAM.
    std::thread::sleep(Duration::from_millis(1500));
    let guest_rss = guest_ram_rss(qemu_pid)?;

    let mut memhold = workload_as(&container_s, "memhold", &["memhold=0@80"], 120, None, &[])?;
    let memhold_pid = memhold.id();
    let oom = tail.wait_for(Duration::from_secs(60), |v| v["type"] == "oom")?;
    let status = qemu.wait()?;
    let _ = memhold.kill();
    let _ = memhold.wait();
    for mut s in sidecars {
        let _ = s.kill();
        let _ = s.wait();
    }
    drop(tail);
    let kernel = kernel_oom_report(qemu_pid)?;
    assert!(!status.success(), "qemu was killed: {status}");

    // The post-mortem names the kill the kernel made.
    let pm = &oom["post_mortem"];
    let kinvoker = kernel.invoker.as_ref().context("kernel invoker")?;
    assert_eq!(
        oom["victim_pid"], qemu_pid,
        "the biggest process, qemu, is the victim"
    );
    assert_eq!(oom["victim_class"], "qemu-other");
    assert_eq!(oom["invoker_comm"], kinvoker.comm.as_str());
    assert_eq!(oom["invoker_tid"].as_u64(), kinvoker.pid.map(u64::from));
    // Whoever charged when the limit was hit (memhold mostly; an idle guest's vCPU sometimes):
    // the class follows from the kernel's own name for it.
    let expected_class = oomtrace::kubevirt::classify_thread_comm(&kinvoker.comm);
    assert_eq!(oom["invoker_class"], expected_class.name());
    assert_eq!(oom["memcg"].as_str(), kernel.oom_memcg.as_deref());
    assert_eq!(
        oom["memcg"],
        pod_kernel_path.as_str(),
        "the pod-level limit was hit"
    );
    assert_eq!(pm["memcg"]["pod"]["pod_uid"], UID);
    assert_eq!(pm["memcg"]["pod"]["level"], "pod");
    assert_eq!(pm["memcg"]["vm"], "default/vm1");
    assert_eq!(pm["memcg"]["limit"], POD_LIMIT);
    let sentence = pm["sentence"].as_str().unwrap_or("");
    assert!(
        sentence
            .starts_with("memhold (a process foreign to KubeVirt in the pod of VM default/vm1)")
            && sentence.contains("qemu-system-x86 (guest RAM"),
        "{sentence}"
    );

    // (a) Guest RAM: the vCPU class's guest bytes, and all of the pod's, vs the kernel's rss of
    // the guest RAM mapping (qemu's main thread loads the guest kernel into it: a few MiB).
    let vcpu_guest = class(pm, "vcpu").context("no vcpu class")?["guest"]
        .as_i64()
        .unwrap_or(0);
    assert!(
        within(vcpu_guest, guest_rss as i64, 5.0),
        "vCPU guest RAM {vcpu_guest} vs kernel's guest-RAM mapping rss {guest_rss}"
    );
    assert!(
        vcpu_guest >= (FILL_MIB << 20) as i64,
        "the guest filled {FILL_MIB} MiB"
    );
    // The victim's guest RAM in all (qemu started unpaused: what the guest touched before
    // oomtrace found the mapping counts too).
    let victim_guest = pm["victim_guest"].as_i64().unwrap_or(0);
    println!("guest RAM: smaps Rss {guest_rss}, vCPU class {vcpu_guest}, victim {victim_guest}");
    assert!(
        within(victim_guest, guest_rss as i64, 5.0),
        "victim guest RAM {victim_guest} vs kernel's guest-RAM mapping rss {guest_rss}"
    );
    for name in [
        "iothread",
        "virt-launcher",
        "virt-launcher-monitor",
        "virtqemud",
        "virtlogd",
        "foreign",
    ] {
        assert!(
            class(pm, name).is_some(),
            "class {name} in {}",
            pm["memcg"]["classes"]
        );
    }
    // memhold: what oomtrace saw it charge vs its rss in the kernel's task table.
    let k_memhold = kernel
        .tasks
        .iter()
        .find(|t| t.pid == memhold_pid)
        .context("memhold in the kernel's task table")?;
    // Its anonymous rss: the binary's file pages were charged to whoever first read the file.
    let k_rss = (k_memhold
        .rss_anon_pages
        .or(k_memhold.rss_pages)
        .unwrap_or(0)
        * 4096) as i64;
    let p_memhold = pm["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["pid"] == memhold_pid))
        .context("memhold in the post-mortem")?;
    assert_eq!(p_memhold["class"], "foreign");
    // Anonymous bytes against rss_anon: memhold's net total is lower, since its direct reclaim
    // at the limit uncharged other processes' page cache (counted against the reclaimer).
    let seen = p_memhold["anon"].as_i64().unwrap_or(0);
    assert!(
        within(seen, k_rss, 5.0),
        "memhold charged {seen} anon vs kernel rss_anon {k_rss}"
    );
    // The budget compares against qemu's -m: guest 600 MiB, 1 vCPU.
    assert!(
        pm["memcg"]["budget"]
            .as_array()
            .is_some_and(|b| !b.is_empty()),
        "budget lines: {}",
        pm["memcg"]
    );
    drop(pod);
    Ok(())
}

/// The seed's "Rapid IO on Guest": the guest writes DISK_MIB to its virtio disk, a host file
/// that qemu writes from its thread pool (aio=threads). With cache=writeback those writes are
/// page cache charged to the pod by qemu's `worker` threads; with cache=none qemu opens the file
/// O_DIRECT and there is none.
const DISK_MIB: u64 = 160;

fn disk_guest_init(modules: &[String]) -> String {
    let insmods = guest::insmod_lines(modules);
    format!(
        r#"#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
{insmods}n=0; while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
dd if=/dev/zero of=/dev/vda bs=1M count={DISK_MIB} oflag=direct 2>&1 | sed 's/^/DD: /'
echo DISK-WRITTEN
while true; do sleep 60; done
"#
    )
}

/// memory.stat's page cache of a v1 memcg and its children (bytes).
fn memcg_page_cache(memcg: &std::path::Path) -> Result<u64> {
    let stat = std::fs::read_to_string(memcg.join("memory.stat"))?;
    stat.lines()
        .find_map(|l| l.strip_prefix("total_cache "))
        .and_then(|v| v.trim().parse().ok())
        .context("memory.stat without total_cache")
}

/// One run: qemu with its disk on `cache`, in a pod; what the kernel charged as page cache
/// against what oomtrace attributed, by thread.
fn guest_disk_run(cache: &str) -> Result<()> {
    let ctl = MemoryController::detect()?;
    let top = format!("oomtrace-test-vmdisk-{cache}-{}", std::process::id());
    let pod = ScratchCgroup::create(&ctl, &format!("{top}/kubepods/burstable/pod{UID}"), 2 << 30)?;
    let container = pod.path.join(CID);
    std::fs::create_dir(&container)?;
    let kernel = guest::kernel(guest::Series::Debian6_1)?;
    let modules = guest::modules(&kernel, &["virtio_pci", "virtio_blk"])?;
    let files: Vec<(String, String)> = modules
        .iter()
        .map(|m| {
            let name = m
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (m.display().to_string(), format!("/lib/{name}"))
        })
        .collect();
    let init = disk_guest_init(&files.iter().map(|(_, g)| g.clone()).collect::<Vec<_>>());
    let file_refs: Vec<(&std::path::Path, &str)> = files
        .iter()
        .map(|(h, g)| (std::path::Path::new(h.as_str()), g.as_str()))
        .collect();
    let initrd = guest::initramfs_with(&format!("vm-disk-{cache}"), &init, &[], &file_refs)?;
    let disk = guest::kit_dir().join(format!("disk-{cache}-{}.img", std::process::id()));
    // A new file: every page the guest writes is new, charged to the memcg that writes it.
    std::fs::File::create(&disk)?.set_len((DISK_MIB * 2) << 20)?;

    let tail = Tail::start(&["--cgroup", &pod.path.display().to_string()])?;
    let before = memcg_page_cache(&pod.path)?;
    let drive = format!(
        "file={},if=virtio,format=raw,cache={cache},aio=threads",
        disk.display()
    );
    let (mut child, rx) = spawn_qemu_in(
        &container.display().to_string(),
        &kernel.vmlinuz,
        &initrd,
        &["-m", "256", "-drive", &drive],
    )?;
    let qemu_pid = child.id();
    let mut written = false;
    let mut console = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("DISK-WRITTEN") => {
                written = true;
                break;
            }
            Ok(l) => console.push(l),
            Err(_) => break,
        }
    }
    // Let oomtrace see the last records (each at most a second old), then read the kernel.
    std::thread::sleep(Duration::from_millis(2500));
    let after = memcg_page_cache(&pod.path)?;
    // The summary while qemu runs: its threads are rows of their own until they exit.
    let summary = tail.stop();
    let _ = child.kill();
    let _ = child.wait();
    let summary = summary?;
    let _ = std::fs::remove_file(&disk);
    if !written {
        bail!("{cache}: the guest never wrote its disk: {console:?}");
    }
    let kernel_cache = after.saturating_sub(before) as i64;
    let threads = summary["threads"].as_array().context("summary threads")?;
    let file_of = |pred: &dyn Fn(&Value) -> bool| -> i64 {
        threads
            .iter()
            .filter(|t| t["pid"] == qemu_pid && pred(t))
            .filter_map(|t| t["file"].as_i64())
            .sum()
    };
    let workers = file_of(&|t| t["class"] == "qemu-worker");
    let all_qemu = file_of(&|_| true);
    let pod_file: i64 = threads.iter().filter_map(|t| t["file"].as_i64()).sum();
    // The pod's class view: the qemu-worker class's page cache, as `tail --by class` shows it.
    let pod_view = summary["memcgs"]
        .as_array()
        .and_then(|ms| {
            ms.iter().find(|m| {
                m["memcg"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&format!("pod{UID}")))
            })
        })
        .context("the pod's memcg view in the summary")?;
    let class_cache = pod_view["classes"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["class"] == "qemu-worker"))
        .and_then(|c| c["page_cache"].as_i64())
        .unwrap_or(0);
    println!(
        "cache={cache}: the guest wrote {DISK_MIB} MiB; memory.stat page cache +{} KiB; oomtrace: qemu's worker threads {} KiB, all of qemu {} KiB, the pod {} KiB of page cache; the pod's qemu-worker class {} KiB",
        kernel_cache / 1024,
        workers / 1024,
        all_qemu / 1024,
        pod_file / 1024,
        class_cache / 1024
    );
    let disk_bytes = (DISK_MIB << 20) as i64;
    if cache == "writeback" {
        // Every written page is page cache, charged by the thread that wrote it: a worker.
        assert!(
            within(kernel_cache, disk_bytes, 10.0),
            "the kernel charged {kernel_cache} bytes of page cache for {disk_bytes} written"
        );
        assert!(
            within(workers, kernel_cache, 5.0),
            "qemu's workers charged {workers} bytes of page cache, memory.stat says {kernel_cache}"
        );
        assert!(
            within(pod_file, kernel_cache, 5.0),
            "the pod's threads charged {pod_file} bytes of page cache, memory.stat says {kernel_cache}"
        );
        assert!(
            within(class_cache, kernel_cache, 5.0),
            "the pod's qemu-worker class holds {class_cache} bytes of page cache, memory.stat says {kernel_cache}"
        );
    } else {
        assert!(
            kernel_cache < disk_bytes / 20
                && workers < disk_bytes / 20
                && class_cache < disk_bytes / 20,
            "cache=none: page cache {kernel_cache} bytes (kernel), {workers} (oomtrace's workers), {class_cache} (their class)"
        );
    }
    Ok(())
}

#[test]
fn real_qemu_guest_disk_writes_are_page_cache_of_qemus_workers_with_writeback_only() -> Result<()> {
    if !require_root(
        "real_qemu_guest_disk_writes_are_page_cache_of_qemus_workers_with_writeback_only",
    ) {
        return Ok(());
    }
    let _serial = serial();
    guest::ensure_tools()?;
    guest_disk_run("writeback")?;
    guest_disk_run("none")
}

/// A VM whose guest RAM is a memfd (`memory-backend-memfd`, as vhost-user devices and virtiofs
/// need): the vCPU faults guest RAM in as shmem, i.e. page cache, not anon. It is guest RAM all
/// the same: the vCPUs' guest bytes match the kernel's rss of the memfd mapping, they are the
/// vCPUs' shmem, and the pod's shmem in memory.stat holds them; qemu's overhead stays small.
#[test]
fn real_qemu_memfd_guest_ram_is_guest_ram_not_overhead() -> Result<()> {
    if !require_root("real_qemu_memfd_guest_ram_is_guest_ram_not_overhead") {
        return Ok(());
    }
    let _serial = serial();
    guest::ensure_tools()?;
    let ctl = MemoryController::detect()?;
    let top = format!("oomtrace-test-vmmemfd-{}", std::process::id());
    let pod = ScratchCgroup::create(&ctl, &format!("{top}/kubepods/burstable/pod{UID}"), 2 << 30)?;
    let container = pod.path.join(CID);
    std::fs::create_dir(&container)?;
    let kernel = guest::debian_cloud_kernel()?;
    let initrd = guest::initramfs("vm-memfd", &guest_init())?;
    let tail = Tail::start(&["--cgroup", &pod.path.display().to_string()])?;
    let backend = format!("memory-backend-memfd,id=pc.ram,size={GUEST_MIB}M,share=on");
    let (mut qemu, console) = spawn_qemu_in(
        &container.display().to_string(),
        &kernel,
        &initrd,
        &[
            "-m",
            &GUEST_MIB.to_string(),
            "-object",
            &backend,
            "-machine",
            "memory-backend=pc.ram",
        ],
    )?;
    let qemu_pid = qemu.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut filled = false;
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match console.recv_timeout(left) {
            Ok(l) if l.contains("GUEST-FILLED") => {
                filled = true;
                break;
            }
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let guest_rss = guest_ram_rss(qemu_pid);
    let maps = std::fs::read_to_string(format!("/proc/{qemu_pid}/maps")).unwrap_or_default();
    let stat = ctl.memory_stat(&pod.path);
    let summary = tail.stop();
    let _ = qemu.kill();
    let _ = qemu.wait();
    if !filled {
        bail!("the guest never filled its RAM: {lines:?}");
    }
    let (summary, guest_rss) = (summary?, guest_rss? as i64);
    let stat = stat.context("the pod's memory.stat")?;
    assert!(
        maps.lines()
            .any(|l| l.contains(" rw-s ") && l.contains("/memfd:")),
        "qemu's guest RAM is the memfd: {maps}"
    );
    let threads = summary["threads"].as_array().context("summary threads")?;
    let vcpus: Vec<&Value> = threads
        .iter()
        .filter(|t| t["pid"] == qemu_pid && t["class"] == "vcpu")
        .collect();
    let sum =
        |ts: &[&Value], field: &str| -> i64 { ts.iter().filter_map(|t| t[field].as_i64()).sum() };
    let (vcpu_guest, vcpu_shmem) = (sum(&vcpus, "guest"), sum(&vcpus, "shmem"));
    let qemu_threads: Vec<&Value> = threads.iter().filter(|t| t["pid"] == qemu_pid).collect();
    let (qemu_total, qemu_guest) = (sum(&qemu_threads, "total"), sum(&qemu_threads, "guest"));
    println!(
        "memfd guest RAM: smaps Rss {guest_rss}; vCPU guest {vcpu_guest}, vCPU shmem {vcpu_shmem}; qemu total {qemu_total}, guest {qemu_guest}; memory.stat shmem {}",
        stat.shmem
    );
    assert!(
        vcpu_guest >= (FILL_MIB << 20) as i64,
        "the guest filled {FILL_MIB} MiB: vCPU guest RAM {vcpu_guest}"
    );
    assert!(
        within(qemu_guest, guest_rss, 5.0),
        "qemu's guest RAM {qemu_guest} vs the kernel's rss of the memfd mapping {guest_rss}"
    );
    assert!(
        within(vcpu_shmem, vcpu_guest, 5.0),
        "the vCPUs' guest RAM is their shmem: {vcpu_shmem} vs {vcpu_guest}"
    );
    assert!(
        stat.shmem as i64 >= vcpu_shmem - vcpu_shmem / 20,
        "memory.stat shmem {} holds the vCPUs' {vcpu_shmem}",
        stat.shmem
    );
    // Overhead: what qemu charged that is not guest RAM (its binary's pages, heap, TCG's code
    // buffer): far below the guest RAM, as with anonymous guest RAM.
    assert!(
        qemu_total - qemu_guest < guest_rss / 4,
        "qemu's overhead {} next to guest RAM {guest_rss}",
        qemu_total - qemu_guest
    );
    drop(pod);
    Ok(())
}
