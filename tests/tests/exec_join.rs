//! The seed's scenario as `kubectl exec` makes it, twenty times in a row: a shell starts in the
//! runtime's memory cgroup and charges memory there, writes itself into a VM pod's container
//! cgroup.procs, execs `memhold`, and memhold grows until the kernel's OOM killer kills the
//! pod's qemu (a stand-in whose vCPU writes into one guest RAM mapping of its `-m` size,
//! started unpaused while oomtrace traces). Every run's `oom` row must say what the kernel's
//! own report says: the invoker by its post-exec name and tid, the OOM memcg (the pod), the
//! VM, and the victim's guest RAM within 5% of the guest mapping's smaps Rss.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use oomtrace::{
    cgroupfs::{MemoryController, Version},
    scratch_cgroup::ScratchCgroup,
    workload::Spec,
};
use tests::{
    Tail, kernel_oom_report, mapping_rss, oomtrace_bin, require_root, serial, spawn_workload,
    touched, within,
};

const RUNS: usize = 20;
const GUEST_MIB: u64 = 96;
const POD_LIMIT: u64 = 176 << 20;
const CID: &str = "0f32894de86edf3d3832702af794874ef8d400b4969acdea4976b12040756e0d";

fn set_limit(dir: &Path, version: Version, bytes: u64) -> Result<()> {
    let file = match version {
        Version::V1 => "memory.limit_in_bytes",
        Version::V2 => "memory.max",
    };
    std::fs::write(dir.join(file), bytes.to_string())
        .with_context(|| format!("cannot limit {}", dir.display()))
}

/// `kubectl exec`'s shape: a shell in the runtime's memcg charges ~8 MB there, joins the
/// container, then execs memhold (a link to oomtrace named memhold: the kernel names the
/// process after the file it execs).
fn exec_into(runtime: &Path, container: &Path, memhold: &Path) -> Result<Child> {
    let script = format!(
        "echo $$ > {rt}/cgroup.procs && x=$(head -c 8000000 /dev/zero | tr '\\0' a) && \
         echo $$ > {ct}/cgroup.procs && exec {mh} workload --process memhold \
         --thread memhold=0@120 --hold 60",
        rt = runtime.display(),
        ct = container.display(),
        mh = memhold.display()
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the exec'ing shell")
}

struct Run {
    kernel_invoker: String,
    checks: Vec<String>,
}

fn one_run(
    i: usize,
    ctl: &MemoryController,
    top: &Path,
    tail: &mut Tail,
    memhold: &Path,
) -> Result<Run> {
    let uid = format!("7c1d2e3f-4a5b-4c6d-8e7f-{i:012}");
    let run = top.join(format!("run{i}"));
    let runtime = run.join("runtime");
    let pod = run.join(format!("kubepods/burstable/pod{uid}"));
    let container = pod.join(CID);
    std::fs::create_dir_all(&runtime)?;
    std::fs::create_dir_all(&container)?;
    set_limit(&pod, ctl.version, POD_LIMIT)?;
    let pod_path = ctl.display_path(&pod);
    let vm_name = format!("vm{i}");
    let guest_m = format!("{GUEST_MIB}M");
    let name_arg = format!("guest=default_{vm_name},debug-threads=on");
    let extra = ["-name", &name_arg, "-m", &guest_m, "-smp", "1"];
    let container_s = container.display().to_string();
    let vcpu = format!("CPU 0/TCG={GUEST_MIB}@400");
    let threads = [vcpu.as_str(), "IO iothread1=4@40"];
    let mut qemu = spawn_workload(&Spec {
        process: "qemu-system-x86",
        cgroup: &container_s,
        threads: &threads,
        hold_secs: 60,
        arg0: Some("/usr/bin/qemu-system-x86_64"),
        extra: &extra,
        guest_ram_mib: GUEST_MIB as usize,
        ..Default::default()
    })?;
    let qemu_pid = qemu.id();
    let result = (|| -> Result<Run> {
        touched(&mut qemu, 2)?;
        let guest_rss = mapping_rss(qemu_pid, GUEST_MIB << 20)?;
        let mut shell = exec_into(&runtime, &container, memhold)?;
        let shell_pid = shell.id();
        let oom = tail.wait_for(Duration::from_secs(30), |v| {
            v["type"] == "oom" && v["victim_pid"] == qemu_pid
        });
        let _ = qemu.wait();
        let _ = shell.kill();
        let _ = shell.wait();
        let oom = oom?;
        let kernel = kernel_oom_report(qemu_pid)?;
        let kinvoker = kernel
            .invoker
            .as_ref()
            .context("kernel report has no invoker")?;
        let pm = &oom["post_mortem"];
        let victim_guest = pm["victim_guest"].as_i64().unwrap_or(0);
        let mut checks = Vec::new();
        let mut check = |ok: bool, what: String| {
            if !ok {
                checks.push(what);
            }
        };
        check(
            oom["invoker_comm"] == kinvoker.comm.as_str(),
            format!(
                "invoker_comm {} vs kernel {}",
                oom["invoker_comm"], kinvoker.comm
            ),
        );
        check(
            oom["invoker_tid"].as_u64() == kinvoker.pid.map(u64::from),
            format!(
                "invoker_tid {} vs kernel {:?}",
                oom["invoker_tid"], kinvoker.pid
            ),
        );
        check(
            oom["memcg"].as_str() == kernel.oom_memcg.as_deref()
                && oom["memcg"].as_str() == Some(pod_path.as_str()),
            format!(
                "memcg {} vs kernel {:?} (pod {pod_path})",
                oom["memcg"], kernel.oom_memcg
            ),
        );
        check(
            pm["memcg"]["vm"] == format!("default/{vm_name}").as_str(),
            format!("vm {} vs default/{vm_name}", pm["memcg"]["vm"]),
        );
        check(
            within(victim_guest, guest_rss as i64, 5.0),
            format!("victim guest RAM {victim_guest} vs smaps Rss {guest_rss}"),
        );
        // The pod's pressure as the kernel counts it, read after the kill: the post-mortem's
        // reading (the last before the kill) cannot be ahead of it.
        let kernel_hits: Option<u64> = match ctl.version {
            Version::V1 => std::fs::read_to_string(pod.join("memory.failcnt"))
                .ok()
                .and_then(|t| t.trim().parse().ok()),
            Version::V2 => std::fs::read_to_string(pod.join("memory.events"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("max ")?.trim().parse().ok())
                }),
        };
        let pressure = &pm["memcg"]["pressure"];
        check(
            kernel_hits.is_some_and(|k| k > 0)
                && pressure["limit_hits"]
                    .as_u64()
                    .zip(kernel_hits)
                    .is_some_and(|(ours, k)| ours <= k),
            format!(
                "limit hits {} vs the kernel's {kernel_hits:?} after the kill",
                pressure["limit_hits"]
            ),
        );
        check(
            (ctl.version == Version::V1) == pressure["stalled_some_60s"].is_null(),
            format!(
                "stall share {} on {:?}",
                pressure["stalled_some_60s"], ctl.version
            ),
        );
        if kinvoker.comm == "memhold" {
            // The shell is memhold now: it is named and blamed as memhold, nothing as "sh".
            check(
                oom["invoker_pid"] == shell_pid && oom["invoker_process"] == "memhold",
                format!(
                    "invoker process {} pid {} vs memhold pid {shell_pid}",
                    oom["invoker_process"], oom["invoker_pid"]
                ),
            );
            let sentence = pm["sentence"].as_str().unwrap_or("");
            check(
                sentence.starts_with("memhold (a process foreign to KubeVirt"),
                format!("sentence: {sentence}"),
            );
        }
        Ok(Run {
            kernel_invoker: kinvoker.comm.clone(),
            checks,
        })
    })();
    let _ = qemu.kill();
    let _ = qemu.wait();
    result
}

#[test]
fn processes_that_join_the_pod_and_exec_are_attributed_as_the_kernel_says_20_of_20() -> Result<()> {
    if !require_root(
        "processes_that_join_the_pod_and_exec_are_attributed_as_the_kernel_says_20_of_20",
    ) {
        return Ok(());
    }
    let _serial = serial();
    let ctl = MemoryController::detect()?;
    let top = ScratchCgroup::create(
        &ctl,
        &format!("oomtrace-test-execjoin-{}", std::process::id()),
        8 << 30,
    )?;
    let links = tempdir()?;
    let memhold = links.join("memhold");
    std::os::unix::fs::symlink(oomtrace_bin()?, &memhold)?;
    let mut tail = Tail::start(&["--cgroup", &top.path.display().to_string()])?;
    let mut failed = Vec::new();
    let mut invokers = Vec::new();
    for i in 0..RUNS {
        match one_run(i, &ctl, &top.path, &mut tail, &memhold) {
            Ok(r) => {
                invokers.push(r.kernel_invoker);
                if !r.checks.is_empty() {
                    failed.push(format!("run {i}: {}", r.checks.join("; ")));
                }
            }
            Err(e) => failed.push(format!("run {i}: {e:#}")),
        }
    }
    drop(tail);
    let _ = std::fs::remove_dir_all(&links);
    println!("kernel invokers: {invokers:?}");
    if !failed.is_empty() {
        bail!(
            "{} of {RUNS} runs disagree with the kernel:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
    assert!(
        invokers.iter().filter(|c| *c == "memhold").count() >= RUNS / 2,
        "the exec'd memhold invoked most kills: {invokers:?}"
    );
    drop(top);
    Ok(())
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("oomtrace-execjoin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir)?;
    Ok(dir)
}
