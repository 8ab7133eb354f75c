//! oomtrace on the real kernel: real eBPF programs, real memory cgroups with real limits, real
//! processes with KubeVirt thread names, real OOM kills; checked against what each thread touched
//! and against the kernel's own OOM report.
use std::time::Duration;

use anyhow::{Context as _, Result};
use oomtrace::{cgroupfs::MemoryController, scratch_cgroup::ScratchCgroup};
use serde_json::Value;
use tests::{
    Tail, ThreadCaps, capability_mask, kernel_oom_report, require_root, serial,
    thread_capabilities, touched, within, workload,
};

const MIB: i64 = 1 << 20;

fn thread(summary: &Value, tid: u32) -> Option<&Value> {
    summary["threads"]
        .as_array()?
        .iter()
        .find(|t| t["tid"] == tid)
}

#[test]
fn attribution_matches_what_each_thread_touched_within_5_percent() -> Result<()> {
    if !require_root("attribution_matches_what_each_thread_touched_within_5_percent") {
        return Ok(());
    }
    attribution(&[], "memcg_lruvec_state_btf")
}

/// The untyped raw-tracepoint program (where the typed one is refused) attributes the same.
#[test]
fn attribution_with_untyped_raw_tracepoints_matches_too() -> Result<()> {
    if !require_root("attribution_with_untyped_raw_tracepoints_matches_too") {
        return Ok(());
    }
    attribution(
        &[("OOMTRACE_UNTYPED_RAW_TRACEPOINTS", "1")],
        "memcg_lruvec_state_raw",
    )
}

/// The classic tracepoint programs (the fallback where a raw prototype differs) attribute the same.
#[test]
fn attribution_with_classic_tracepoints_matches_too() -> Result<()> {
    if !require_root("attribution_with_classic_tracepoints_matches_too") {
        return Ok(());
    }
    attribution(
        &[("OOMTRACE_CLASSIC_TRACEPOINTS", "1")],
        "memcg_lruvec_state",
    )
}

fn attribution(env: &[(&str, &str)], charge_program: &str) -> Result<()> {
    let _serial = serial();
    let ctl = MemoryController::detect()?;
    let cg = ScratchCgroup::create(
        &ctl,
        &format!("oomtrace-test-attr-{}", std::process::id()),
        1 << 30,
    )?;
    let path = cg.path.display().to_string();
    let tail = Tail::start_with_env(&["--cgroup", &path], env)?;
    let start = tail
        .seen
        .iter()
        .find(|v| v["type"] == "start")
        .context("start line")?;
    let charge = start["hooks"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["hook"] == "charge"))
        .context("charge hook in the start line")?;
    assert_eq!(charge["programs"][0], charge_program, "{charge}");
    // Tracing is live, so the capabilities are dropped: what it says it keeps is what every
    // thread holds (and all the work below, the guest RAM programs attached when the qemu
    // appears included, is done with only those).
    let kept: Vec<&str> = start["capabilities"]["kept"]
        .as_array()
        .context("capabilities in the start line")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut sorted = kept.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "CAP_BPF",
            "CAP_DAC_READ_SEARCH",
            "CAP_PERFMON",
            "CAP_SYS_PTRACE"
        ],
        "{start}"
    );
    let mask = capability_mask(kept)?;
    for (tid, caps) in thread_capabilities(tail.pid())? {
        let want = ThreadCaps {
            effective: mask,
            permitted: mask,
            bounding: mask,
            ambient: 0,
            no_new_privs: true,
        };
        assert_eq!(caps, want, "thread {tid} of oomtrace tail");
    }

    let mut qemu = workload(
        &path,
        "qemu-system-x86",
        &["CPU 0/KVM=40@160", "IO iothread1=12@48"],
        30,
    )?;
    let mut memhold = workload(&path, "memhold", &["memhold=24@96"], 30)?;
    let mut expected = touched(&mut qemu, 2)?;
    expected.extend(touched(&mut memhold, 1)?);
    // Let the last partial batch be swept (the sweep runs every 500 ms).
    std::thread::sleep(Duration::from_millis(1200));
    let summary = tail.stop()?;
    let _ = (qemu.kill(), memhold.kill(), qemu.wait(), memhold.wait());

    for (tid, name, bytes) in &expected {
        let t = thread(&summary, *tid)
            .with_context(|| format!("thread {tid} ({name}) missing in {summary}"))?;
        assert_eq!(t["comm"], name.as_str(), "thread comm");
        let anon = t["anon"].as_i64().unwrap_or(0);
        let total = t["total"].as_i64().unwrap_or(0);
        assert!(
            within(anon, *bytes, 5.0),
            "{name}: anon {anon} vs touched {bytes}"
        );
        assert!(
            within(total, *bytes, 5.0),
            "{name}: total {total} vs touched {bytes}"
        );
    }
    // The sidecar's bytes are its own: its process total is what its one thread touched, and no
    // qemu thread holds them.
    let memhold_pid = memhold.id();
    let procs = summary["processes"].as_array().context("processes")?;
    let mh = procs
        .iter()
        .find(|p| p["pid"] == memhold_pid)
        .context("memhold process missing")?;
    assert_eq!(mh["process"], "memhold");
    assert!(
        within(mh["anon"].as_i64().unwrap_or(0), 24 * MIB, 5.0),
        "memhold process: {mh}"
    );
    let qemu_pid = qemu.id();
    let q = procs
        .iter()
        .find(|p| p["pid"] == qemu_pid)
        .context("qemu process missing")?;
    assert_eq!(q["process"], "qemu-system-x86");
    assert!(
        within(q["anon"].as_i64().unwrap_or(0), 52 * MIB, 5.0),
        "qemu process: {q}"
    );
    assert_eq!(
        summary["counters"]["ring_drops"], 0,
        "no ring-buffer drops at this rate"
    );
    drop(cg);
    assert!(
        !std::path::Path::new(&path).exists(),
        "the scratch cgroup is removed"
    );
    Ok(())
}

#[test]
fn oom_kill_names_the_invoker_and_victim_the_kernel_names() -> Result<()> {
    if !require_root("oom_kill_names_the_invoker_and_victim_the_kernel_names") {
        return Ok(());
    }
    let _serial = serial();
    let ctl = MemoryController::detect()?;
    let cg = ScratchCgroup::create(
        &ctl,
        &format!("oomtrace-test-oom-{}", std::process::id()),
        128 << 20,
    )?;
    let path = cg.path.display().to_string();
    let mut tail = Tail::start(&["--cgroup", &path])?;

    let mut memhold = workload(&path, "memhold", &["memhold=32@64"], 60)?;
    touched(&mut memhold, 1)?;
    let mut qemu = workload(
        &path,
        "qemu-system-x86",
        &["CPU 0/KVM=0@64", "IO iothread1=8@8"],
        60,
    )?;
    let oom = tail.wait_for(Duration::from_secs(30), |v| v["type"] == "oom")?;
    let victim = oom["victim_pid"].as_u64().context("victim_pid")? as u32;
    // The rarer hooks run too: the invoker reclaimed at the limit before the kill, and the
    // victim's last thread ends its process (group_dead, where the kernel passes it: 6.16+).
    let reclaimed = |v: &Value| v["type"] == "reclaim" && v["tid"] == oom["invoker_tid"];
    assert!(
        tail.seen.iter().any(reclaimed),
        "no reclaim row of the invoker before the kill"
    );
    let group_dead =
        std::fs::read_to_string("/sys/kernel/tracing/events/sched/sched_process_exit/format")
            .is_ok_and(|f| f.contains("group_dead"));
    tail.wait_for(Duration::from_secs(10), |v| {
        v["type"] == "exit" && v["pid"] == victim && (!group_dead || v["group_dead"] == true)
    })
    .context("the victim's exit")?;
    std::thread::sleep(Duration::from_millis(500));
    // The OOM killer's SIGKILL is the kernel's own: an oom row, never a kill_signal row.
    let signals = tail
        .seen
        .iter()
        .filter(|v| v["type"] == "kill_signal")
        .count();
    let summary = tail.stop()?;
    let _ = (qemu.kill(), memhold.kill(), qemu.wait(), memhold.wait());
    assert_eq!(signals, 0, "the kernel's kill taken for a process's");

    let kernel = kernel_oom_report(victim)?;
    assert_eq!(
        victim,
        qemu.id(),
        "the biggest process, qemu, is the victim"
    );
    let kvictim = kernel.victim.as_ref().context("kernel victim")?;
    let kvictim_anon_kb = kvictim
        .anon_rss_kb
        .context("the kernel's Killed line without anon-rss")?;
    let kinvoker = kernel.invoker.as_ref().context("kernel invoker")?;
    assert_eq!(oom["victim_comm"], kvictim.comm.as_str());
    assert_eq!(
        oom["invoker_comm"],
        kinvoker.comm.as_str(),
        "invoker thread as the kernel names it"
    );
    assert_eq!(
        oom["invoker_tid"].as_u64(),
        kinvoker.pid.map(u64::from),
        "invoker thread id as the kernel prints it"
    );
    assert_eq!(oom["invoker_process"], "qemu-system-x86");
    assert_eq!(
        oom["memcg"].as_str(),
        kernel.oom_memcg.as_deref(),
        "the memcg whose limit was hit"
    );
    assert_eq!(
        oom["victim_anon_rss_kb"], kvictim_anon_kb,
        "victim anon rss at the kill"
    );
    assert_eq!(oom["limit"], 128 << 20);
    assert_eq!(summary["ooms"].as_array().map(Vec::len), Some(1));
    // What oomtrace saw the victim charge before the kill is what the kernel found it holding.
    let charged_kb = oom["victim_charged_anon"].as_i64().unwrap_or(0) / 1024;
    assert!(
        within(charged_kb, kvictim_anon_kb as i64, 5.0),
        "victim charged {charged_kb} kB vs anon-rss {kvictim_anon_kb} kB"
    );
    Ok(())
}

/// Kills that are not the kernel's: a userspace OOM killer's SIGKILL and kubelet's SIGTERM to
/// watched processes are rows naming the sender (its pid and name, what it is), the target and
/// its memcg's usage at that moment.
#[test]
fn kill_signals_from_other_processes_name_their_sender() -> Result<()> {
    if !require_root("kill_signals_from_other_processes_name_their_sender") {
        return Ok(());
    }
    let _serial = serial();
    let ctl = MemoryController::detect()?;
    let cg = ScratchCgroup::create(
        &ctl,
        &format!("oomtrace-test-signal-{}", std::process::id()),
        512 << 20,
    )?;
    let path = cg.path.display().to_string();
    // The senders: kill(1) run under the names the kernel will report (comm is the name the
    // program was exec'd by).
    let bin = std::env::temp_dir().join(format!("oomtrace-test-senders-{}", std::process::id()));
    std::fs::create_dir_all(&bin)?;
    for name in ["systemd-oomd", "kubelet"] {
        let link = bin.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/usr/bin/kill", &link)?;
    }
    let mut tail = Tail::start(&["--cgroup", &path])?;
    let mut qemu = workload(&path, "qemu-system-x86", &["CPU 0/KVM=16@64"], 60)?;
    let mut memhold = workload(&path, "memhold", &["memhold=16@64"], 60)?;
    touched(&mut qemu, 1)?;
    touched(&mut memhold, 1)?;
    // Charged and seen before the signals.
    for pid in [qemu.id(), memhold.id()] {
        tail.wait_for(Duration::from_secs(10), |v| {
            v["type"] == "charge" && v["pid"] == pid
        })?;
    }
    let mut sent = Vec::new();
    for (sender, sig, target) in [
        ("systemd-oomd", "-KILL", qemu.id()),
        ("kubelet", "-TERM", memhold.id()),
    ] {
        let mut k = std::process::Command::new(bin.join(sender))
            .args([sig, &target.to_string()])
            .spawn()?;
        sent.push((k.id(), sender, target));
        k.wait()?;
    }
    let mut rows = Vec::new();
    for (sender_pid, sender, target) in &sent {
        let row = tail.wait_for(Duration::from_secs(10), |v| {
            v["type"] == "kill_signal" && v["pid"] == *target
        })?;
        assert_eq!(row["sender_pid"], *sender_pid, "{row}");
        assert_eq!(row["sender_comm"], *sender, "{row}");
        assert!(
            row["memcg"]
                .as_str()
                .is_some_and(|m| path.ends_with(m) && m.len() > 1),
            "{row}"
        );
        assert_eq!(row["result"], "delivered", "{row}");
        assert!(
            row["usage"].as_u64().is_some_and(|u| u >= 16 << 20),
            "{row}"
        );
        rows.push(row);
    }
    assert_eq!(
        (
            &rows[0]["signal"],
            &rows[0]["sender_kind"],
            &rows[0]["process"]
        ),
        (
            &Value::from("SIGKILL"),
            &Value::from("userspace OOM killer"),
            &Value::from("qemu-system-x86")
        )
    );
    assert_eq!(
        (
            &rows[1]["signal"],
            &rows[1]["sender_kind"],
            &rows[1]["class"]
        ),
        (
            &Value::from("SIGTERM"),
            &Value::from("kubelet"),
            &Value::from("foreign")
        )
    );
    let _ = (qemu.wait(), memhold.wait());
    let summary = tail.stop()?;
    let _ = std::fs::remove_dir_all(&bin);
    assert_eq!(summary["ooms"].as_array().map(Vec::len), Some(0));
    Ok(())
}

/// A pod made while tracing (a VM starting): its memcg is new to oomtrace, and its first pages
/// are charged before any rescan could know it. They are counted all the same.
#[test]
fn a_memcg_made_after_start_is_counted_from_its_first_page() -> Result<()> {
    if !require_root("a_memcg_made_after_start_is_counted_from_its_first_page") {
        return Ok(());
    }
    let _serial = serial();
    let ctl = MemoryController::detect()?;
    let cg = ScratchCgroup::create(
        &ctl,
        &format!("oomtrace-test-new-{}", std::process::id()),
        1 << 30,
    )?;
    let tail = Tail::start(&["--cgroup", &cg.path.display().to_string()])?;
    let child = cg.path.join("pod-new");
    std::fs::create_dir(&child)?;
    let mut w = workload(
        &child.display().to_string(),
        "qemu-system-x86",
        &["CPU 0/KVM=24@400"],
        30,
    )?;
    let touched = touched(&mut w, 1)?;
    std::thread::sleep(Duration::from_millis(1500));
    let summary = tail.stop()?;
    let _ = (w.kill(), w.wait());
    let (tid, _, bytes) = touched[0].clone();
    let t = thread(&summary, tid).context("the thread in the new memcg was not seen")?;
    let anon = t["anon"].as_i64().unwrap_or(0);
    assert!(within(anon, bytes, 5.0), "anon {anon} vs touched {bytes}");
    Ok(())
}

/// Thread and cgroup names belong to other tenants: in tail's text output their control
/// characters are escapes, never raw bytes that would drive the operator's terminal.
#[test]
fn hostile_thread_and_cgroup_names_are_escaped_in_text_output() -> Result<()> {
    if !require_root("hostile_thread_and_cgroup_names_are_escaped_in_text_output") {
        return Ok(());
    }
    let _serial = serial();
    let ctl = MemoryController::detect()?;
    let cg = ScratchCgroup::create(
        &ctl,
        &format!(
            "oomtrace-test-evil-{}/pod\x1b]0;owned\x07",
            std::process::id()
        ),
        1 << 30,
    )?;
    let path = cg.path.display().to_string();
    let mut tail = std::process::Command::new(tests::oomtrace_bin()?)
        .args(["tail", "--cgroup", &path])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = tail.stderr.take().context("tail stderr")?;
    let mut err_lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    // "oomtrace: tracing via ...; Ctrl-C to stop" once the hooks are attached.
    err_lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("Ctrl-C"))
        .context("tail did not start")?;
    let evil = "\x1b[2J\x1b[31mEVIL\r";
    let mut w = workload(&path, "evil", &[&format!("{evil}=8@64")], 20)?;
    touched(&mut w, 1)?;
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(tail.id() as i32, libc::SIGINT) };
    let out = tail.wait_with_output()?;
    let _ = (w.kill(), w.wait());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(r"\x1b[2J\x1b[31mEVIL\r"),
        "the thread's name, escaped: {text}"
    );
    assert!(
        text.contains(r"pod\x1b]0;owned\x07"),
        "the cgroup's name, escaped: {text}"
    );
    assert!(
        !text.bytes().any(|b| b == 0x1b || b == b'\r' || b == 0x07),
        "a raw control byte reached the terminal: {text:?}"
    );
    Ok(())
}

/// Kernel memory per thread in the right unit: the memcg tracepoint gives every item in pages
/// (slab bytes and stack kilobytes converted), so a process that starts 128 threads that stay
/// (a kernel stack each, task structs, page tables) in a fresh memcg shows as much kernel memory
/// as the memcg's own counter holds (v1 memory.kmem.usage_in_bytes, v2 memory.stat kernel).
#[test]
fn kernel_memory_per_thread_matches_the_memcgs_kernel_counter() -> Result<()> {
    if !require_root("kernel_memory_per_thread_matches_the_memcgs_kernel_counter") {
        return Ok(());
    }
    let _serial = serial();
    let ctl = MemoryController::detect()?;
    let cg = ScratchCgroup::create(
        &ctl,
        &format!("oomtrace-test-kmem-{}", std::process::id()),
        1 << 30,
    )?;
    let path = cg.path.display().to_string();
    let tail = Tail::start(&["--cgroup", &path])?;
    let threads: Vec<String> = (0..128).map(|i| format!("t{i}=1@200/free")).collect();
    let specs: Vec<&str> = threads.iter().map(String::as_str).collect();
    let mut w = workload(&path, "kthreads", &specs, 30)?;
    let _ = touched(&mut w, specs.len())?;
    std::thread::sleep(Duration::from_millis(1500));
    let kernel = ctl
        .memory_stat(&cg.path)
        .and_then(|s| s.kernel)
        .context("the memcg's kernel memory counter")? as i64;
    let summary = tail.stop()?;
    let _ = (w.kill(), w.wait());
    let seen: i64 = summary["threads"]
        .as_array()
        .context("threads")?
        .iter()
        .filter(|t| t["pid"] == w.id())
        .map(|t| t["kernel"].as_i64().unwrap_or(0))
        .sum();
    eprintln!("kernel memory: the process's threads {seen}, the memcg {kernel}");
    assert!(
        kernel > 128 * (16 << 10),
        "128 kernel stacks at least: {kernel}"
    );
    // The tracepoint floors each slab update to whole pages (a task struct's ~10 KiB is two),
    // so the threads show up to ~10% less than the memcg holds here (8-9% in runs on 6.18);
    // never more. Before the unit fix they showed a third of it.
    assert!(
        seen <= kernel + kernel / 20 && seen >= kernel - kernel * 15 / 100,
        "kernel memory charged by the process's threads {seen} vs the memcg's {kernel}"
    );
    drop(cg);
    Ok(())
}

/// Shmem per thread: a thread that fills memfds (as a memfd-backed guest's RAM, or a tmpfs
/// file) shows them as shmem, a part of its page cache; a thread touching anonymous memory next
/// to it shows none; the pod's shmem is what the memcg's own memory.stat says.
#[test]
fn shmem_per_thread_matches_the_memcgs_shmem() -> Result<()> {
    if !require_root("shmem_per_thread_matches_the_memcgs_shmem") {
        return Ok(());
    }
    let _serial = serial();
    let ctl = MemoryController::detect()?;
    let cg = ScratchCgroup::create(
        &ctl,
        &format!("oomtrace-test-shmem-{}", std::process::id()),
        1 << 30,
    )?;
    let path = cg.path.display().to_string();
    let tail = Tail::start(&["--cgroup", &path])?;
    let mut w = workload(
        &path,
        "virtiofsd",
        &["virtiofsd=24@200/shmem", "anon=16@200"],
        30,
    )?;
    let touched = touched(&mut w, 2)?;
    std::thread::sleep(Duration::from_millis(1200));
    let stat = ctl
        .memory_stat(&cg.path)
        .context("the memcg's memory.stat")?;
    let summary = tail.stop()?;
    let _ = (w.kill(), w.wait());
    let by_name = |name: &str| {
        touched
            .iter()
            .find(|(_, n, _)| n == name)
            .and_then(|(tid, _, bytes)| Some((thread(&summary, *tid)?.clone(), *bytes)))
    };
    let (shmem_thread, bytes) = by_name("virtiofsd").context("the shmem thread")?;
    let (anon_thread, _) = by_name("anon").context("the anon thread")?;
    let shmem = shmem_thread["shmem"]
        .as_i64()
        .context("shmem is measured")?;
    let file = shmem_thread["file"].as_i64().unwrap_or(0);
    assert!(
        within(shmem, bytes, 5.0),
        "shmem {shmem} vs touched {bytes}"
    );
    assert!(
        within(file, bytes, 5.0),
        "its page cache {file} holds the shmem"
    );
    assert!(
        shmem_thread["anon"].as_i64().unwrap_or(0) < MIB,
        "{shmem_thread}"
    );
    assert_eq!(anon_thread["shmem"], 0, "{anon_thread}");
    // cgroup v1 keeps socket buffers outside the usage: no thread shows a sock figure there.
    if ctl.version == oomtrace::cgroupfs::Version::V1 {
        assert!(shmem_thread["sock"].is_null(), "{shmem_thread}");
    }
    let pod_shmem: i64 = summary["threads"]
        .as_array()
        .context("threads")?
        .iter()
        .filter(|t| t["pid"] == w.id())
        .filter_map(|t| t["shmem"].as_i64())
        .sum();
    eprintln!(
        "shmem: the thread {shmem}, the process {pod_shmem}, memory.stat {}",
        stat.shmem
    );
    assert!(
        within(pod_shmem, stat.shmem as i64, 5.0),
        "the process's shmem {pod_shmem} vs memory.stat shmem {}",
        stat.shmem
    );
    drop(cg);
    Ok(())
}
