//! Support for the end-to-end tests: the oomtrace binary, root checks, a running `tail`, the
//! workload, and the kernel's own OOM report read back from the kernel log.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex, OnceLock,
        mpsc::{self, Receiver},
    },
    time::{Duration, Instant},
};

pub mod bench;
pub mod guest;
pub mod load;

use anyhow::{Context as _, Result, bail};
use oomtrace::explain::{parse::Assembler, report::OomReport};
use serde_json::Value;

/// Tests that need root say so and are skipped; CI runs as root, so there they run.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!(
            "SKIPPED {test}: needs root to load eBPF programs and make memory cgroups (CI runs it as root)"
        );
        return false;
    }
    true
}

/// Tests that make memory cgroups and OOM kills run one at a time: two OOMs at once would make
/// the kernel log ambiguous.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The oomtrace binary, built (or found up to date) once per test run.
pub fn oomtrace_bin() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "oomtrace"])
            .current_dir(&workspace)
            .status()
            .map_err(|e| format!("cannot run cargo build: {e}"))?;
        if !status.success() {
            return Err("cargo build -p oomtrace failed".into());
        }
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or(workspace.join("target"));
        Ok(target.join("debug").join("oomtrace"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Capability numbers (linux/capability.h) of the names the DaemonSet may add.
const CAPS: [(&str, u32); 6] = [
    ("DAC_READ_SEARCH", 2),
    ("SYS_PTRACE", 19),
    ("SYS_ADMIN", 21),
    ("SYS_RESOURCE", 24),
    ("PERFMON", 38),
    ("BPF", 39),
];

/// The capabilities deploy/oomtrace.yaml adds (after dropping ALL), with their numbers.
pub fn manifest_caps() -> Result<Vec<(String, u32)>> {
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/oomtrace.yaml"),
    )?;
    let line = manifest
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("add:"))
        .context("the manifest adds no capabilities")?;
    line.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_string())
        .filter(|c| !c.is_empty())
        .map(|name| {
            let n = CAPS
                .iter()
                .find(|(c, _)| *c == name)
                .map(|(_, n)| *n)
                .with_context(|| format!("unknown capability {name} in the manifest"))?;
            Ok((name, n))
        })
        .collect()
}

/// `./x dist` once per test process: the static binary (target/static/oomtrace) and, with
/// `image`, the image and its OCI archive (target/static/oomtrace-<version>.oci.tar).
pub fn dist(image: bool) -> Result<PathBuf> {
    static DONE: Mutex<Option<bool>> = Mutex::new(None);
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if done.is_none_or(|with_image| image && !with_image) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["run", "--quiet", "-p", "xtask", "--", "dist"]);
        if !image {
            cmd.arg("--no-image");
        }
        let status = cmd
            .current_dir(&workspace)
            .status()
            .context("cannot run ./x dist")?;
        if !status.success() {
            bail!("./x dist failed ({status})");
        }
        *done = Some(image);
    }
    Ok(workspace.join("target/static"))
}

/// A running `oomtrace tail --json`, its lines read on a thread.
pub struct Tail {
    child: Child,
    lines: Receiver<String>,
    pub seen: Vec<Value>,
}

impl Tail {
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::start_with_env(args, &[])
    }

    /// `start` with environment variables set for oomtrace (variant switches).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut child = Command::new(oomtrace_bin()?)
            .envs(env.iter().copied())
            .arg("tail")
            .arg("--json")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start oomtrace tail")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tail = Self {
            child,
            lines: rx,
            seen: Vec::new(),
        };
        tail.wait_for(Duration::from_secs(20), |v| v["type"] == "start")
            .context("oomtrace tail did not start")?;
        Ok(tail)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a line matching `pred` arrives; every line is kept in `seen`.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            let v: Value =
                serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?;
            self.seen.push(v.clone());
            if pred(&v) {
                return Ok(v);
            }
        }
        bail!(
            "timed out after {timeout:?}; last lines: {:?}",
            self.seen.iter().rev().take(3).collect::<Vec<_>>()
        )
    }

    /// Ctrl-C, then the summary line.
    pub fn stop(mut self) -> Result<Value> {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let summary = self.wait_for(Duration::from_secs(20), |v| v["type"] == "summary")?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("oomtrace tail exited with {status}");
        }
        Ok(summary)
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the workload: one process named `process` in `cgroup`, one thread per `NAME=MIB@RATE`.
pub fn workload(cgroup: &str, process: &str, threads: &[&str], hold_secs: u64) -> Result<Child> {
    workload_as(cgroup, process, threads, hold_secs, None, &[])
}

/// The workload with its command line dressed as another program's: argv[0] `arg0` and
/// `extra` after `--` (e.g. virt-launcher's `--name vm1 --namespace default`).
pub fn workload_as(
    cgroup: &str,
    process: &str,
    threads: &[&str],
    hold_secs: u64,
    arg0: Option<&str>,
    extra: &[&str],
) -> Result<Child> {
    spawn_workload(&oomtrace::workload::Spec {
        process,
        cgroup,
        threads,
        hold_secs,
        arg0,
        extra,
        ..Default::default()
    })
}

/// Starts any workload spec, stdout piped (for `touched`).
pub fn spawn_workload(spec: &oomtrace::workload::Spec) -> Result<Child> {
    let mut cmd = spec.command(&oomtrace_bin()?);
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    cmd.spawn().context("cannot start workload")
}

/// Reads `touched TID NAME BYTES` lines until `n` threads reported.
pub fn touched(child: &mut Child, n: usize) -> Result<Vec<(u32, String, i64)>> {
    let stdout = child.stdout.take().context("workload stdout")?;
    let mut out = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Some(rest) = line.strip_prefix("touched ") else {
            continue;
        };
        let (tid, rest) = rest.split_once(' ').context("bad touched line")?;
        let (name, bytes) = rest.rsplit_once(' ').context("bad touched line")?;
        out.push((tid.parse()?, name.to_string(), bytes.parse()?));
        if out.len() == n {
            break;
        }
    }
    if out.len() != n {
        bail!("workload reported {} of {n} threads", out.len());
    }
    Ok(out)
}

/// The kernel's own account of the kill of `victim_pid`, read back from its log (`dmesg`),
/// the last such report (pids are reused across test runs).
pub fn kernel_oom_report(victim_pid: u32) -> Result<OomReport> {
    let out = Command::new("dmesg").output().context("cannot run dmesg")?;
    oom_report_in(&String::from_utf8_lossy(&out.stdout), victim_pid)
}

/// The last report in `text` (a kernel log) of the kill of `victim_pid`.
pub fn oom_report_in(text: &str, victim_pid: u32) -> Result<OomReport> {
    let mut asm = Assembler::new();
    let mut found = None;
    for line in text.lines() {
        if let Some(r) = asm.push(line)
            && r.victim.as_ref().is_some_and(|v| v.pid == victim_pid)
        {
            found = Some(r);
        }
    }
    if let Some(r) = asm.finish()
        && r.victim.as_ref().is_some_and(|v| v.pid == victim_pid)
    {
        found = Some(r);
    }
    found.with_context(|| format!("kernel log has no report of the kill of pid {victim_pid}"))
}

/// What an `oom` row says that the kernel's report of the same kill says otherwise: the
/// invoker (post-exec name, tid), the OOM memcg (expected: `pod`), the VM, the victim's guest
/// RAM against the guest mapping's smaps Rss (5%), and, when memhold invoked it, that memhold
/// (not the shell it was before exec) is named and blamed. Empty when all agree.
pub fn disagreements(
    oom: &Value,
    kernel: &OomReport,
    pod: &str,
    vm: &str,
    guest_rss: u64,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            out.push(what);
        }
    };
    let Some(k) = kernel.invoker.as_ref() else {
        return vec!["the kernel's report has no invoker".into()];
    };
    let pm = &oom["post_mortem"];
    check(
        oom["invoker_comm"] == k.comm.as_str(),
        format!("invoker_comm {} vs kernel {}", oom["invoker_comm"], k.comm),
    );
    check(
        oom["invoker_tid"].as_u64() == k.pid.map(u64::from),
        format!("invoker_tid {} vs kernel {:?}", oom["invoker_tid"], k.pid),
    );
    check(
        oom["memcg"].as_str() == kernel.oom_memcg.as_deref() && oom["memcg"].as_str() == Some(pod),
        format!(
            "memcg {} vs kernel {:?} (pod {pod})",
            oom["memcg"], kernel.oom_memcg
        ),
    );
    check(
        pm["memcg"]["vm"] == vm,
        format!("vm {} vs {vm}", pm["memcg"]["vm"]),
    );
    let victim_guest = pm["victim_guest"].as_i64().unwrap_or(0);
    check(
        within(victim_guest, guest_rss as i64, 5.0),
        format!("victim guest RAM {victim_guest} vs smaps Rss {guest_rss}"),
    );
    if k.comm == "memhold" {
        check(
            oom["invoker_process"] == "memhold",
            format!("invoker process {}", oom["invoker_process"]),
        );
        let sentence = pm["sentence"].as_str().unwrap_or("");
        check(
            sentence.starts_with("memhold (a process foreign to KubeVirt"),
            format!("sentence: {sentence}"),
        );
    }
    out
}

/// The thread ids of `pid` whose comm is `comm`.
pub fn tids_named(pid: u32, comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|c| c.trim_end() == comm)
        })
        .collect()
}

/// A process's resident set in bytes, as /proc/<pid>/status says (VmRSS).
pub fn vm_rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Rss of the mapping of `pid` that is exactly `size` bytes (qemu's guest RAM is the anonymous
/// mapping of the `-m` size), from /proc/<pid>/smaps: the kernel's count of guest RAM.
pub fn mapping_rss(pid: u32, size: u64) -> Result<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let want = (size / 1024).to_string();
    let mut in_it = false;
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Size:") {
            in_it = kb.trim().trim_end_matches(" kB").trim() == want;
        } else if in_it && let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches(" kB").trim().parse()?;
            return Ok(kb * 1024);
        }
    }
    bail!("process {pid} has no mapping of {size} bytes")
}

/// |a − b| ≤ pct% of b.
pub fn within(a: i64, b: i64, pct: f64) -> bool {
    (a - b).abs() as f64 <= b.abs() as f64 * pct / 100.0
}

/// Installs the Debian packages whose binaries are missing (CI starts from a clean machine).
pub fn ensure_debian(needed: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(bin, _)| !std::path::Path::new(bin).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get install {missing:?} failed");
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound and released: good enough for a test).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// GET http://127.0.0.1:`port``path` with curl: (HTTP status, body).
pub fn http_get(port: u16, path: &str, accept: Option<&str>) -> Result<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "10", "-w", "\n%{http_code}"]);
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .context("cannot run curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

/// One thread's capability sets as the kernel shows them in /proc/PID/task/TID/status.
#[derive(Debug, PartialEq, Eq)]
pub struct ThreadCaps {
    pub effective: u64,
    pub permitted: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

/// Every thread of `pid`, with its capability sets.
pub fn thread_capabilities(pid: u32) -> Result<Vec<(u32, ThreadCaps)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let tid: u32 = entry.file_name().to_string_lossy().parse()?;
        let status = std::fs::read_to_string(entry.path().join("status"))?;
        let field = |name: &str| -> Result<u64> {
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .with_context(|| format!("{name} missing in thread {tid}'s status"))?;
            Ok(u64::from_str_radix(v.trim(), 16)?)
        };
        out.push((
            tid,
            ThreadCaps {
                effective: field("CapEff:")?,
                permitted: field("CapPrm:")?,
                bounding: field("CapBnd:")?,
                ambient: field("CapAmb:")?,
                no_new_privs: field("NoNewPrivs:")? == 1,
            },
        ));
    }
    Ok(out)
}

/// The capability mask of these names (CAP_BPF, ...).
pub fn capability_mask<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<u64> {
    let mut mask = 0;
    for name in names {
        let cap: caps::Capability = name.parse().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        mask |= cap.bitmask();
    }
    Ok(mask)
}

/// The pod UID and container cgroup of `pod_cgroups`.
pub const POD_UID: &str = "5d2e3f4a-6b7c-4d8e-9f0a-1b2c3d4e5f60";
pub const POD_CONTAINER: &str =
    "cri-containerd-4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071829.scope";

/// A pod-shaped memcg (kubepods/burstable/pod<UID>, limited) with its container's memcg under a
/// scratch top: (the pod, the container's path, the top the agent watches).
pub fn pod_cgroups(
    name: &str,
    limit: u64,
) -> Result<(oomtrace::scratch_cgroup::ScratchCgroup, PathBuf, PathBuf)> {
    let ctl = oomtrace::cgroupfs::MemoryController::detect()?;
    let top = format!("{name}-{}", std::process::id());
    let pod = oomtrace::scratch_cgroup::ScratchCgroup::create(
        &ctl,
        &format!("{top}/kubepods/burstable/pod{POD_UID}"),
        limit,
    )?;
    let container = pod.path.join(POD_CONTAINER);
    std::fs::create_dir(&container)?;
    let top_path = pod
        .path
        .ancestors()
        .nth(3)
        .context("top cgroup")?
        .to_path_buf();
    Ok((pod, container, top_path))
}

/// `report FILE --json` of a capture: exit 0 asserted; its `capture` line (header, records,
/// warnings) and the summary that ends it.
pub fn report_capture(file: &Path) -> Result<(Value, Value)> {
    let out = Command::new(oomtrace_bin()?)
        .arg("report")
        .arg(file)
        .arg("--json")
        .output()?;
    if !out.status.success() {
        bail!(
            "report {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let head = lines
        .iter()
        .find(|v| v["type"] == "capture")
        .cloned()
        .context("the capture line")?;
    let summary = lines
        .iter()
        .rfind(|v| v["type"] == "summary")
        .cloned()
        .context("the summary")?;
    Ok((head, summary))
}

/// A capture's warnings, each the reader's "last frame is torn" (what a killed or stopped
/// writer leaves): None if another kind is among them.
pub fn torn_tail_warnings(head: &Value) -> Option<usize> {
    let warnings = head["warnings"].as_array().cloned().unwrap_or_default();
    warnings
        .iter()
        .all(|w| w.as_str().is_some_and(|w| w.contains("last frame is torn")))
        .then_some(warnings.len())
}
