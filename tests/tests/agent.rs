//! `oomtrace agent` through a real memcg OOM kill in a VM-pod-shaped memcg (a qemu stand-in
//! with guest RAM, a memhold exec'd into the pod), scraped by a real Prometheus server
//! (Debian's, on 127.0.0.1): the kill counter with the pod and VM labels, the pod's guest,
//! overhead and class series, `promtool check metrics` on the exposition; the kill directory's
//! post-mortem and a capture that `report` reads alone after the flight recorder rotated past
//! the kill; one JSON line per kill on stdout; SIGTERM ends it cleanly.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use oomtrace::{cgroupfs::MemoryController, scratch_cgroup::ScratchCgroup, workload::Spec};
use serde_json::Value;
use tests::{
    ensure_debian, free_port, http_get, oomtrace_bin, require_root, serial, spawn_workload,
    touched, workload,
};

use tests::{POD_CONTAINER as CID, POD_UID as UID, pod_cgroups};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out waiting for {what}")
}

/// A running `oomtrace agent` (through `launcher`, e.g. setpriv), its stdout lines and its
/// stderr kept, tracing `cgroup`, ready (its /healthz answered 200).
struct AgentRun {
    child: Killed,
    port: u16,
    lines: mpsc::Receiver<String>,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl AgentRun {
    fn start(
        launcher: &[std::ffi::OsString],
        dir: &Path,
        cgroup: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let port = free_port()?;
        let (program, before) = launcher.split_first().context("empty launcher")?;
        let mut child = Command::new(program)
            .args(before)
            .args(["agent", "--dir"])
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--cgroup", &cgroup.display().to_string()])
            .args(["--flush-bytes", "4096"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start oomtrace agent")?;
        let stdout = child.stdout.take().context("agent stdout")?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = log.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("agent: {l}");
                keep.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            }
        });
        let mut child = Killed(child);
        wait_until("/healthz", Duration::from_secs(30), || {
            http_get(port, "/healthz", None).is_ok_and(|(c, _)| c == 200)
                || child.0.try_wait().is_ok_and(|s| s.is_some())
        })?;
        if let Some(status) = child.0.try_wait()? {
            bail!("the agent exited with {status}");
        }
        Ok(Self {
            child,
            port,
            lines,
            log,
        })
    }

    /// The agent's log lines containing `text`.
    fn logged(&self, text: &str) -> usize {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }

    /// A sample's value in the agent's /metrics (`name` with its labels as served).
    fn metric(&self, name: &str) -> Option<f64> {
        let (code, body) = http_get(self.port, "/metrics", None).ok()?;
        if code != 200 {
            return None;
        }
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> Result<std::process::ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.0.id() as i32, libc::SIGTERM) };
        Ok(self.child.0.wait()?)
    }
}

fn start_prometheus(dir: &Path, agent_port: u16) -> Result<(Killed, u16)> {
    let port = free_port()?;
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: oomtrace\n    \
             static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n"
        ),
    )?;
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start prometheus")?;
    let p = Killed(child);
    wait_until("prometheus to be ready", Duration::from_secs(30), || {
        http_get(port, "/-/ready", None).is_ok_and(|(c, _)| c == 200)
    })?;
    Ok((p, port))
}

/// Prometheus's answer to an instant query: its result vector.
fn query(port: u16, q: &str) -> Result<Vec<Value>> {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "--get", "--data-urlencode"])
        .arg(format!("query={q}"))
        .arg(format!("http://127.0.0.1:{port}/api/v1/query"))
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("prometheus said {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

fn scratch(name: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("oomtrace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

#[test]
fn agent_keeps_every_kill_and_prometheus_scrapes_its_metrics() -> Result<()> {
    if !require_root("agent_keeps_every_kill_and_prometheus_scrapes_its_metrics") {
        return Ok(());
    }
    let _serial = serial();
    ensure_debian(&[
        ("/usr/bin/prometheus", "prometheus"),
        ("/usr/bin/promtool", "prometheus"),
        ("/usr/bin/curl", "curl"),
    ])?;
    let work = scratch("agent")?;
    let (pod, container, top_path) = pod_cgroups("oomtrace-test-agent", 160 << 20)?;
    let container_s = container.display().to_string();

    // The pod's bundles as containerd's CRI plugin lays them out (a real containerd cannot run
    // a CRI pod here: no CNI, no images), with the annotations it writes.
    let bundles = work.join("containerd/io.containerd.runtime.v2.task/k8s.io");
    let sandbox = bundles.join("9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d");
    std::fs::create_dir_all(&sandbox)?;
    std::fs::write(
        sandbox.join("config.json"),
        format!(
            r#"{{"ociVersion":"1.1.0","process":{{"args":["/pause"]}},"annotations":{{
            "io.kubernetes.cri.container-type":"sandbox",
            "io.kubernetes.cri.sandbox-id":"4a5b6c7d8e9f",
            "io.kubernetes.cri.sandbox-name":"virt-launcher-vm1-x7k2p",
            "io.kubernetes.cri.sandbox-namespace":"default",
            "io.kubernetes.cri.sandbox-uid":"{UID}"}}}}"#
        ),
    )?;
    // The compute container's bundle: its directory is the id its cgroup is named with.
    let compute = bundles.join(
        CID.trim_start_matches("cri-containerd-")
            .trim_end_matches(".scope"),
    );
    std::fs::create_dir_all(&compute)?;
    std::fs::write(
        compute.join("config.json"),
        format!(
            r#"{{"ociVersion":"1.1.0","process":{{"args":["/usr/bin/virt-launcher-monitor"]}},"annotations":{{
            "io.kubernetes.cri.container-type":"container",
            "io.kubernetes.cri.container-name":"compute",
            "io.kubernetes.cri.sandbox-id":"9e8d7c6b5a4f",
            "io.kubernetes.cri.sandbox-name":"virt-launcher-vm1-x7k2p",
            "io.kubernetes.cri.sandbox-namespace":"default",
            "io.kubernetes.cri.sandbox-uid":"{UID}"}}}}"#
        ),
    )?;
    let dir = work.join("state");
    let bundles_s = bundles.display().to_string();
    let agent = AgentRun::start(
        &[oomtrace_bin()?.into_os_string()],
        &dir,
        &top_path,
        &[
            "--before",
            "1m",
            "--after",
            "2s",
            "--max-disk",
            "1M",
            "--runtime-state",
            &bundles_s,
        ],
    )?;
    let agent_port = agent.port;
    let lines = &agent.lines;
    let (_prom, prom_port) = start_prometheus(&work, agent_port)?;

    // The VM: a qemu stand-in whose vCPU writes 96 MiB of guest RAM; then memhold grows.
    let extra = [
        "-name",
        "guest=default_vm1,debug-threads=on",
        "-m",
        "96M",
        "-smp",
        "1",
    ];
    let mut qemu = spawn_workload(&Spec {
        process: "qemu-system-x86",
        cgroup: &container_s,
        threads: &["CPU 0/TCG=96@300", "IO iothread1=8@40"],
        hold_secs: 120,
        arg0: Some("/usr/bin/qemu-system-x86_64"),
        extra: &extra,
        guest_ram_mib: 96,
        ..Default::default()
    })?;
    let qemu_pid = qemu.id();
    touched(&mut qemu, 2)?;
    // Scraped at least once with the VM's guest RAM in it (a fixed sleep lost that race under
    // load: guest RAM 0 in a clean-clone run).
    let guest_sel = "pod=\"virt-launcher-vm1-x7k2p\",vm=\"vm1\",namespace=\"default\"";
    wait_until(
        "the VM's guest RAM in Prometheus",
        Duration::from_secs(60),
        || {
            query(
                prom_port,
                &format!("oomtrace_memcg_guest_bytes{{{guest_sel}}}"),
            )
            .is_ok_and(|r| {
                r.iter().any(|s| {
                    s["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v > (90 << 20) as f64)
                })
            })
        },
    )?;
    let mut memhold = workload(&container_s, "memhold", &["memhold=0@80"], 120)?;
    let line = lines
        .recv_timeout(Duration::from_secs(30))
        .context("no kill line on the agent's stdout")?;
    let kill: Value = serde_json::from_str(&line)?;
    assert_eq!(kill["type"], "oom", "{line}");
    assert_eq!(kill["victim_pid"], qemu_pid);
    // The container's name, from its bundle, on the threads that charged in it.
    let top = kill["post_mortem"]["top"]
        .as_array()
        .context("top threads")?;
    assert!(
        top.iter()
            .any(|t| t["comm"] == "memhold" && t["container"] == "compute"),
        "{line}"
    );
    let _ = qemu.wait();
    let _ = (memhold.kill(), memhold.wait());

    // Prometheus saw the kill with the pod and VM labels, and the pod's series.
    let sel = "pod=\"virt-launcher-vm1-x7k2p\",vm=\"vm1\",namespace=\"default\"";
    wait_until("the kill in Prometheus", Duration::from_secs(20), || {
        query(prom_port, &format!("oomtrace_oom_kills_total{{{sel}}}"))
            .is_ok_and(|r| r.iter().any(|s| s["value"][1] == "1"))
    })?;
    let kills = query(prom_port, &format!("oomtrace_oom_kills_total{{{sel}}}"))?;
    assert_eq!(
        kills[0]["metric"]["victim_class"], "qemu-other",
        "{kills:?}"
    );
    assert_eq!(kills[0]["metric"]["invoker_class"], "foreign", "{kills:?}");
    // This test's own SIGKILL to memhold is a kill that was not the kernel's: its own series.
    wait_until(
        "the kill signal in Prometheus",
        Duration::from_secs(20),
        || {
            query(
            prom_port,
            &format!(
                "oomtrace_kill_signals_total{{{sel},signal=\"SIGKILL\",sender_kind=\"other\",target_class=\"foreign\"}}"
            ),
        )
        .is_ok_and(|r| r.iter().any(|s| s["value"][1] == "1"))
        },
    )?;
    let guest = query(
        prom_port,
        &format!("max_over_time(oomtrace_memcg_guest_bytes{{{sel}}}[5m])"),
    )?;
    let guest_bytes: f64 = guest
        .first()
        .and_then(|s| s["value"][1].as_str()?.parse().ok())
        .context("no guest RAM series")?;
    assert!(
        (guest_bytes - (96 << 20) as f64).abs() < (96 << 20) as f64 * 0.05,
        "guest RAM {guest_bytes}"
    );
    for q in [
        format!("oomtrace_memcg_overhead_bytes{{{sel}}}"),
        format!("oomtrace_memcg_class_bytes{{{sel},class=\"vcpu\"}}"),
        format!("oomtrace_memcg_class_bytes{{{sel},class=\"foreign\"}}"),
        format!("oomtrace_memcg_limit_bytes{{{sel}}}"),
        "oomtrace_resident_memory_bytes".to_string(),
        "oomtrace_cpu_seconds_total".to_string(),
        "oomtrace_dropped_events_total".to_string(),
    ] {
        // Scraped at least once: memhold (the only foreign thread of the pod; interrupt work on
        // an idle CPU is kernel work) lives about a second, and a scrape may not have come yet.
        wait_until(
            &format!("a series for {q}"),
            Duration::from_secs(30),
            || query(prom_port, &format!("max_over_time({q}[5m])")).is_ok_and(|r| !r.is_empty()),
        )?;
    }
    // The tier of every hook, as `doctor` chooses it on this kernel (off where no tier works).
    let doctor: Value = serde_json::from_slice(
        &Command::new(oomtrace_bin()?)
            .args(["doctor", "--json"])
            .output()?
            .stdout,
    )?;
    let hooks = doctor["hooks"].as_array().context("doctor's hooks")?;
    assert!(hooks.len() >= 5, "{doctor}");
    for h in hooks {
        let series = format!(
            "oomtrace_hook_info{{hook={},tier={},target={}}}",
            h["hook"], h["tier"], h["target"]
        );
        assert_eq!(agent.metric(&series), Some(1.0), "{series}");
    }
    // OpenMetrics when asked for (Prometheus asks), the Prometheus text format otherwise.
    let (code, om) = http_get(agent_port, "/metrics", Some("application/openmetrics-text"))?;
    assert!(code == 200 && om.trim_end().ends_with("# EOF"), "{om}");
    // The shipped dashboard asks only for series the agent serves, and the DaemonSet passes
    // only options the agent has.
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dashboard = std::fs::read_to_string(deploy.join("grafana-dashboard.json"))?;
    let names: std::collections::BTreeSet<&str> = dashboard
        .match_indices("oomtrace_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| !n.starts_with("oomtrace_vm_pods"))
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    // Served now, or scraped by Prometheus during the test: a family with no series is left
    // out of a scrape (time to the limit, once the pod stopped growing after its kill).
    for n in &names {
        let served = om
            .lines()
            .any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} ")));
        assert!(
            served
                || query(prom_port, &format!("max_over_time({n}[10m])"))
                    .is_ok_and(|r| !r.is_empty()),
            "the dashboard asks for {n}, which the agent does not serve"
        );
    }
    let manifest = std::fs::read_to_string(deploy.join("oomtrace.yaml"))?;
    let help = Command::new(oomtrace_bin()?)
        .args(["agent", "--help"])
        .output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- --"))
        .map(|f| f.split('=').next().unwrap_or(f))
    {
        assert!(
            help.contains(&format!("--{flag}")),
            "the DaemonSet passes --{flag}"
        );
    }
    // promtool accepts the text exposition as served.
    let (code, body) = http_get(agent_port, "/metrics", None)?;
    assert_eq!(code, 200);
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(check.stdin.as_mut().context("stdin")?, body.as_bytes())?;
    let out = check.wait_with_output()?;
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The kill directory: the row, the post-mortem, and (after --after) the cut capture.
    let kills_dir = dir.join("kills");
    let kill_dir = || -> Option<PathBuf> {
        std::fs::read_dir(&kills_dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .next()
    };
    wait_until("the kill's capture", Duration::from_secs(15), || {
        kill_dir().is_some_and(|d| d.join("capture.otr").exists())
    })?;
    let kd = kill_dir().context("kill directory")?;
    let name = kd.file_name().and_then(|n| n.to_str()).unwrap_or("");
    assert!(name.ends_with("-default_vm1"), "{name}");
    let pm = std::fs::read_to_string(kd.join("post-mortem.txt"))?;
    assert!(
        pm.contains("*** OOM KILL") && pm.contains("memhold"),
        "{pm}"
    );
    let row: Value = serde_json::from_str(std::fs::read_to_string(kd.join("oom.json"))?.trim())?;
    assert_eq!(row["victim_pid"], qemu_pid);
    for f in ["oom.json", "post-mortem.txt", "capture.otr"] {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(kd.join(f))?.permissions());
        assert_eq!(mode & 0o777, 0o600, "{f} is {mode:o}");
    }

    // Push the flight recorder (1 MiB, 8 files) past the kill: threads that touch and free.
    let flight = dir.join("flight.otr");
    let kill_in_flight = || -> Result<bool> {
        let mut files = oomtrace::agent::flight_files(&flight);
        files.retain(|f| f.exists());
        let args: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        let out = Command::new(oomtrace_bin()?)
            .arg("report")
            .args(&args)
            .arg("--json")
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let summary: Value = text
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or(Value::Null);
        Ok(summary["ooms"].as_array().is_some_and(|o| !o.is_empty()))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while kill_in_flight()? {
        if Instant::now() > deadline {
            bail!("the flight recorder never rotated past the kill");
        }
        let mut churn = workload(
            &container_s,
            "churn",
            &["a=48@400/free", "b=48@400/free"],
            0,
        )?;
        touched(&mut churn, 2)?;
        let _ = churn.wait();
    }
    let (code, report) = {
        let out = Command::new(oomtrace_bin()?)
            .arg("report")
            .arg(kd.join("capture.otr"))
            .output()?;
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0));
    assert!(
        report.contains("*** OOM KILL")
            && report.contains(
                "memhold (a process foreign to KubeVirt in the pod of VM default/vm1) grew"
            ),
        "{report}"
    );

    // SIGTERM: a clean exit.
    let status = agent.stop()?;
    assert!(status.success(), "agent exited with {status}");
    drop(pod);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(at: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(at)?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "oomtrace-test",
            ])
            .arg(at)
            .status()?
            .success();
        if !ok {
            bail!("cannot mount a tmpfs at {}", at.display());
        }
        Ok(Self(at.to_path_buf()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Writes `path` until the file system is full, then gives `leave` bytes back.
fn fill(path: &Path, leave: u64) -> Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0x5au8; 16 << 10];
    while f.write_all(&chunk).is_ok() {}
    let len = f.metadata()?.len();
    f.set_len(len.saturating_sub(leave))?;
    Ok(())
}

/// DIR's disk fills up: the flight recorder stops with one log line and the `recording` metric
/// at 0, tracing and metrics go on (a kill is still counted and printed), what was not recorded
/// is counted; once there is room again it resumes in a new file, and every file it wrote
/// still reads. SIGTERM ends it with 0.
#[test]
fn agent_on_a_full_disk_keeps_tracing_and_resumes_recording() -> Result<()> {
    if !require_root("agent_on_a_full_disk_keeps_tracing_and_resumes_recording") {
        return Ok(());
    }
    let _serial = serial();
    ensure_debian(&[("/usr/bin/curl", "curl")])?;
    let work = scratch("agent-full")?;
    let dir = work.join("state");
    let mount = Mounted::tmpfs(&dir, "2m")?;
    let filler = dir.join("filler");
    fill(&filler, 96 << 10)?;
    let ctl = MemoryController::detect()?;
    let top = format!("oomtrace-test-agent-full-{}", std::process::id());
    let pod = ScratchCgroup::create(&ctl, &format!("{top}/pod"), 48 << 20)?;
    let pod_s = pod.path.display().to_string();
    let top_path = pod.path.parent().context("top cgroup")?.to_path_buf();
    let agent = AgentRun::start(
        &[oomtrace_bin()?.into_os_string()],
        &dir,
        &top_path,
        &["--max-disk", "1M"],
    )?;
    assert_eq!(agent.metric("oomtrace_recording"), Some(1.0));

    // Threads that touch and free until the recorder has filled the disk.
    let deadline = Instant::now() + Duration::from_secs(120);
    while agent.metric("oomtrace_recording") != Some(0.0) {
        if Instant::now() > deadline {
            bail!("the flight recorder never filled the disk");
        }
        let mut churn = workload(&pod_s, "churn", &["a=8@200/free", "b=8@200/free"], 0)?;
        touched(&mut churn, 2)?;
        let _ = churn.wait();
    }
    assert_eq!(agent.logged("recording stopped"), 1, "one line says it");
    let events = agent.metric("oomtrace_events_total").context("events")?;

    // Still tracing: a kill is printed and counted, the lost records are counted.
    let mut memhold = workload(&pod_s, "memhold", &["memhold=0@80"], 120)?;
    let line = agent
        .lines
        .recv_timeout(Duration::from_secs(30))
        .context("no kill line while the recorder is stopped")?;
    let kill: Value = serde_json::from_str(&line)?;
    assert_eq!(kill["type"], "oom", "{line}");
    let _ = memhold.wait();
    wait_until("the kill counted", Duration::from_secs(10), || {
        agent
            .metric("oomtrace_events_total")
            .is_some_and(|e| e > events)
            && http_get(agent.port, "/metrics", None).is_ok_and(|(_, b)| {
                b.lines()
                    .any(|l| l.starts_with("oomtrace_oom_kills_total{"))
            })
    })?;
    let unrecorded = agent
        .metric("oomtrace_dropped_events_total{kind=\"unrecorded\"}")
        .context("unrecorded")?;
    assert!(unrecorded > 0.0, "nothing counted as unrecorded");
    assert_eq!(agent.logged("recording stopped"), 1, "still one line");

    // Room again: it resumes.
    std::fs::remove_file(&filler)?;
    wait_until("the recorder to resume", Duration::from_secs(30), || {
        agent.metric("oomtrace_recording") == Some(1.0)
    })?;
    assert_eq!(agent.logged("recording resumed"), 1);
    let status = agent.stop()?;
    assert!(status.success(), "agent exited with {status}");

    // Every file reads; the one cut short by the full disk ends in a torn frame, skipped.
    let files = oomtrace::agent::flight_files(&dir.join("flight.otr"));
    assert!(files.len() >= 2, "{files:?}");
    for f in &files {
        let out = Command::new(oomtrace_bin()?)
            .arg("report")
            .arg(f)
            .output()?;
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(mount);
    drop(pod);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn cap_mask(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().parse::<String>().ok())
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
}

/// The image's files: the OCI archive unpacked layer by layer into `root`, and its config.
fn unpack_image(archive: &Path, work: &Path, root: &Path) -> Result<Value> {
    let oci = work.join("oci");
    std::fs::create_dir_all(&oci)?;
    std::fs::create_dir_all(root)?;
    let untar = |file: &Path, into: &Path| -> Result<()> {
        let ok = Command::new("tar")
            .arg("-xf")
            .arg(file)
            .arg("-C")
            .arg(into)
            .status()?
            .success();
        if !ok {
            bail!("cannot unpack {}", file.display());
        }
        Ok(())
    };
    untar(archive, &oci)?;
    let blob = |digest: &Value| -> Result<PathBuf> {
        let d = digest.as_str().context("digest")?;
        let hex = d.strip_prefix("sha256:").context("sha256 digest")?;
        Ok(oci.join("blobs/sha256").join(hex))
    };
    let index: Value = serde_json::from_slice(&std::fs::read(oci.join("index.json"))?)?;
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(&index["manifests"][0]["digest"])?)?)?;
    for layer in manifest["layers"].as_array().context("layers")? {
        untar(&blob(&layer["digest"])?, root)?;
    }
    Ok(serde_json::from_slice(&std::fs::read(blob(
        &manifest["config"]["digest"],
    )?)?)?)
}

/// What ships: the image built by `./x dist` holds the static binary alone (no dynamic
/// dependencies), and that binary, run as the DaemonSet runs it (root with exactly the
/// manifest's capabilities, no new privileges), traces a real OOM kill of a qemu that runs as
/// another user (uid 107, as KubeVirt's does): its guest RAM read from its smaps, the kill kept.
#[test]
fn agent_from_the_image_runs_with_the_manifests_capabilities() -> Result<()> {
    if !require_root("agent_from_the_image_runs_with_the_manifests_capabilities") {
        return Ok(());
    }
    let _serial = serial();
    ensure_debian(&[
        ("/usr/bin/curl", "curl"),
        ("/usr/bin/setpriv", "util-linux"),
    ])?;
    let static_dir = tests::dist(true)?;
    let work = scratch("agent-image")?;
    let root = work.join("rootfs");
    let config = unpack_image(
        &static_dir.join(format!("oomtrace-{}.oci.tar", env!("CARGO_PKG_VERSION"))),
        &work,
        &root,
    )?;
    assert_eq!(
        config["config"]["Entrypoint"][0], "/usr/bin/oomtrace",
        "{config}"
    );
    let bin = root.join("usr/bin/oomtrace");
    assert_eq!(
        std::fs::read(&bin)?,
        std::fs::read(static_dir.join("oomtrace"))?,
        "the image's binary is the one ./x dist built"
    );
    let files: Vec<String> = walk(&root)
        .iter()
        .filter_map(|p| Some(p.strip_prefix(&root).ok()?.display().to_string()))
        .collect();
    assert_eq!(
        files,
        ["usr/bin/oomtrace"],
        "FROM scratch: the binary alone"
    );
    let ldd = Command::new("ldd").arg(&bin).output()?;
    let said =
        String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd: {said}"
    );
    let headers = Command::new("readelf")
        .args(["-ld", "-W"])
        .arg(&bin)
        .output()?;
    let headers = String::from_utf8_lossy(&headers.stdout);
    assert!(headers.contains("LOAD"), "{headers}");
    assert!(
        !headers.contains("INTERP") && !headers.contains("(NEEDED)"),
        "an interpreter or shared libraries: {headers}"
    );

    // The manifest's capabilities, less those this machine does not give (its bounding set).
    let own = std::fs::read_to_string("/proc/self/status")?;
    let bounding = cap_mask(&own, "CapBnd:").context("CapBnd")?;
    let mut keep = Vec::new();
    let mut mask = 0u64;
    for (name, n) in tests::manifest_caps()? {
        if bounding & (1 << n) == 0 {
            println!("NOTE: this machine does not give CAP_{name}; run without it");
            continue;
        }
        keep.push(format!("+{}", name.to_lowercase()));
        mask |= 1 << n;
    }
    let launcher: Vec<std::ffi::OsString> = vec![
        "setpriv".into(),
        "--inh-caps=-all".into(),
        format!("--bounding-set=-all,{}", keep.join(",")).into(),
        "--no-new-privs".into(),
        "--".into(),
        bin.clone().into_os_string(),
    ];

    let (pod, container, top_path) = pod_cgroups("oomtrace-test-agent-image", 128 << 20)?;
    let container_s = container.display().to_string();
    let dir = work.join("state");
    let agent = AgentRun::start(&launcher, &dir, &top_path, &["--after", "1s"])?;
    // Tracing is live (/healthz answered), so the agent has dropped what it no longer needs:
    // of the manifest's set, every thread keeps only these (SYS_ADMIN is not among them where
    // perf_event_paranoid <= 2, as here; SYS_RESOURCE was for the memlock limit at load).
    let kept = tests::capability_mask([
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_SYS_PTRACE",
        "CAP_DAC_READ_SEARCH",
    ])? & mask;
    for (tid, caps) in tests::thread_capabilities(agent.child.0.id())? {
        assert_eq!(
            (
                caps.effective,
                caps.permitted,
                caps.bounding,
                caps.no_new_privs
            ),
            // Without CAP_SETPCAP (not in the manifest) the bounding set stays as started;
            // no-new-privs keeps an exec from using it.
            (kept, kept, mask, true),
            "thread {tid} of the agent: {caps:?}, started with {mask:x}"
        );
    }

    // qemu runs as uid 107: it joins its container's cgroup itself (the file is its own, as
    // a delegated cgroup's would be), and the agent reads its /proc through its capabilities.
    const QEMU_UID: u32 = 107;
    for f in ["cgroup.procs", "tasks"] {
        let p = container.join(f);
        if p.exists() {
            std::os::unix::fs::chown(&p, Some(QEMU_UID), Some(QEMU_UID))?;
        }
    }
    let qemu_bin = work.join("qemu-bin");
    std::fs::copy(oomtrace_bin()?, &qemu_bin)?;
    std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let extra = [
        "-name",
        "guest=default_vm1,debug-threads=on",
        "-m",
        "64M",
        "-smp",
        "1",
    ];
    let spec = Spec {
        process: "qemu-system-x86",
        cgroup: &container_s,
        threads: &["CPU 0/TCG=64@300", "IO iothread1=4@40"],
        hold_secs: 120,
        arg0: Some("/usr/bin/qemu-system-x86_64"),
        extra: &extra,
        guest_ram_mib: 64,
        ..Default::default()
    };
    let mut cmd = spec.command(&qemu_bin);
    std::os::unix::process::CommandExt::uid(&mut cmd, QEMU_UID);
    std::os::unix::process::CommandExt::gid(&mut cmd, QEMU_UID);
    let mut qemu = Killed(
        cmd.stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start the qemu stand-in")?,
    );
    let qemu_pid = qemu.0.id();
    touched(&mut qemu.0, 2)?;
    let sel =
        format!("oomtrace_memcg_guest_bytes{{namespace=\"default\",pod=\"{UID}\",vm=\"vm1\"}}");
    wait_until(
        "the guest RAM in the metrics",
        Duration::from_secs(15),
        || {
            agent
                .metric(&sel)
                .is_some_and(|g| (g - (64 << 20) as f64).abs() < (64 << 20) as f64 * 0.05)
        },
    )?;
    let mut memhold = workload(&container_s, "memhold", &["memhold=0@80"], 120)?;
    let line = agent
        .lines
        .recv_timeout(Duration::from_secs(30))
        .context("no kill line")?;
    let kill: Value = serde_json::from_str(&line)?;
    assert_eq!(kill["victim_pid"], qemu_pid, "{line}");
    assert_eq!(kill["post_mortem"]["memcg"]["vm"], "default/vm1", "{line}");
    let guest = kill["post_mortem"]["victim_guest"].as_i64().unwrap_or(0);
    assert!(
        tests::within(guest, 64 << 20, 5.0),
        "victim guest RAM {guest}: {line}"
    );
    let _ = (memhold.kill(), memhold.wait());
    let kills_dir = dir.join("kills");
    wait_until("the kill's capture", Duration::from_secs(15), || {
        std::fs::read_dir(&kills_dir)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .is_some_and(|e| e.path().join("capture.otr").exists())
    })?;
    let status = agent.stop()?;
    assert!(status.success(), "agent exited with {status}");
    drop(qemu);
    drop(pod);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Every file under `dir` (not directories), sorted.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// What a hostile or broken client on the node can send to the metrics port: garbage, huge
/// and endless headers, bodies, wrong methods and versions, connections that never finish.
fn malformed_request(n: u64) -> Vec<u8> {
    // xorshift: a different, reproducible request each time.
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let garbage = |len: usize, next: &mut dyn FnMut() -> u64| -> Vec<u8> {
        (0..len).map(|_| next() as u8).collect()
    };
    match n % 10 {
        0 => garbage(1 + (next() % 4096) as usize, &mut next),
        1 => {
            let mut r = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Long: ".to_vec();
            r.extend(std::iter::repeat_n(b'a', 200 << 10));
            r.extend(b"\r\n\r\n");
            r
        }
        2 => {
            let mut r = b"GET /metrics HTTP/1.1\r\n".to_vec();
            for i in 0..5000 {
                r.extend(format!("H{i}: v\r\n").as_bytes());
            }
            r.extend(b"\r\n");
            r
        }
        3 => b"POST /metrics HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\nabc".to_vec(),
        4 => b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        5 => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        6 => {
            let mut r = b"GET /".to_vec();
            r.extend(garbage(64, &mut next));
            r.extend(b" HTTP/1.1\r\n\r\n");
            r
        }
        7 => b"GET /metrics HTTP/9.9\r\n\r\n".to_vec(),
        8 => {
            let mut r = Vec::new();
            for _ in 0..200 {
                r.extend(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            }
            r
        }
        _ => b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[test]
fn agent_survives_malformed_requests_on_its_port() -> Result<()> {
    if !require_root("agent_survives_malformed_requests_on_its_port") {
        return Ok(());
    }
    let _serial = serial();
    ensure_debian(&[("/usr/bin/curl", "curl")])?;
    let work = scratch("agent-http")?;
    let ctl = MemoryController::detect()?;
    let top = format!("oomtrace-test-agent-http-{}", std::process::id());
    let pod = ScratchCgroup::create(&ctl, &format!("{top}/pod"), 64 << 20)?;
    let top_path = pod.path.parent().context("top cgroup")?.to_path_buf();
    let agent = AgentRun::start(
        &[oomtrace_bin()?.into_os_string()],
        &work.join("state"),
        &top_path,
        &[],
    )?;
    let pid = agent.child.0.id();
    let rss_before = rss_kib(pid).context("agent RSS")?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], agent.port));
    let connect = || -> Option<std::net::TcpStream> {
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
        Some(s)
    };
    // 100 connections that send half a request and wait: more than the agent serves at once.
    let mut held = Vec::new();
    for _ in 0..100 {
        if let Some(mut s) = connect() {
            let _ = std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHo");
            held.push(s);
        }
    }
    // 2000 malformed requests, 4 clients at a time.
    std::thread::scope(|scope| {
        for worker in 0..4u64 {
            scope.spawn(move || {
                for n in (worker..2000).step_by(4) {
                    if let Some(mut s) = connect() {
                        let _ = std::io::Write::write_all(&mut s, &malformed_request(n));
                        let mut sink = [0u8; 4096];
                        let _ = std::io::Read::read(&mut s, &mut sink);
                    }
                }
            });
        }
    });
    drop(held);
    // Still serving, still tracing, not panicked, and the requests left no memory behind.
    wait_until(
        "/healthz after the garbage",
        Duration::from_secs(30),
        || http_get(agent.port, "/healthz", None).is_ok_and(|(c, _)| c == 200),
    )?;
    assert!(agent.metric("oomtrace_events_total").is_some());
    let rss_after = rss_kib(pid).context("agent RSS after")?;
    println!("agent RSS: {rss_before} KiB before, {rss_after} KiB after the requests");
    assert!(
        rss_after < rss_before + (32 << 10),
        "agent RSS {rss_before} KiB before, {rss_after} KiB after 2100 malformed requests"
    );
    assert_eq!(agent.logged("panicked"), 0);
    let status = agent.stop()?;
    assert!(status.success(), "agent exited with {status}");
    drop(pod);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The agent SIGKILLed at 6 moments under thread churn: every flight-recorder file it left is
/// read by `report`, at most a torn last frame lost, with a warning saying so.
#[test]
fn agent_killed_at_random_moments_leaves_flight_files_report_reads() -> Result<()> {
    if !require_root("agent_killed_at_random_moments_leaves_flight_files_report_reads") {
        return Ok(());
    }
    let _serial = serial();
    ensure_debian(&[("/usr/bin/curl", "curl")])?;
    let work = scratch("agent-kill")?;
    let ctl = MemoryController::detect()?;
    let top = format!("oomtrace-test-agent-kill-{}", std::process::id());
    let pod = ScratchCgroup::create(&ctl, &format!("{top}/pod"), 512 << 20)?;
    let pod_s = pod.path.display().to_string();
    let top_path = pod.path.parent().context("top cgroup")?.to_path_buf();
    let mut load = Killed(
        Command::new(env!("CARGO_BIN_EXE_oomtrace-bench"))
            .args([
                "churn",
                "--cgroup",
                &pod_s,
                "--threads",
                "100000000",
                "--parallel",
                "8",
            ])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..6 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let after = Duration::from_millis(200 + x % 3000);
        let dir = work.join(format!("state-{i}"));
        let mut agent = AgentRun::start(
            &[oomtrace_bin()?.into_os_string()],
            &dir,
            &top_path,
            &["--max-disk", "1M"],
        )?;
        std::thread::sleep(after);
        agent.child.0.kill()?;
        agent.child.0.wait()?;
        let files = oomtrace::agent::flight_files(&dir.join("flight.otr"));
        assert!(!files.is_empty(), "a live agent had its flight file");
        for f in files {
            let (head, _) = tests::report_capture(&f)?;
            assert!(
                tests::torn_tail_warnings(&head).is_some_and(|n| n <= 1),
                "killed after {after:?}: {}: {}",
                f.display(),
                head["warnings"]
            );
        }
    }
    let _ = load.0.kill();
    drop(pod);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
