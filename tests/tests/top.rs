//! `oomtrace top` in a real terminal (tmux: send-keys, capture-pane) through a real scenario:
//! a pod-shaped memcg (kubepods/burstable/pod<UID>/<container>, limited) with a qemu stand-in
//! whose vCPU faults in guest RAM, then a memhold exec'd into the pod grows to the pod's OOM
//! kill. Live: the pod row against the kernel's usage and limit, the classes on the detail
//! screen, the kill in the kills pane and its post-mortem, and `q` leaves the terminal as it
//! was. Then the same run's capture with `--from`: a seek to the kill, and the screen at a
//! time against what `report --at` says for it.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use oomtrace::{output::bytes, workload::Spec};
use serde_json::Value;
use tests::{
    ensure_debian, oomtrace_bin, pod_cgroups, require_root, serial, spawn_workload, touched,
    workload,
};

/// A tmux session running one command, killed when dropped.
struct Pane(String);

impl Pane {
    /// `cmd` in a new 120×32 session; after it ends the shell says how, and what the terminal
    /// is left like (stty), then waits.
    fn start(name: &str, cmd: &[String]) -> Result<Self> {
        let quoted: Vec<String> = cmd.iter().map(|a| format!("'{a}'")).collect();
        let script = format!(
            "{}; echo \"top exited $?\"; stty -a | tr -s ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo)'; sleep 600",
            quoted.join(" ")
        );
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", name])
            .output();
        let ok = Command::new("tmux")
            .args(["new-session", "-d", "-s", name, "-x", "120", "-y", "32"])
            .arg(script)
            .env("TERM", "xterm-256color")
            .status()?
            .success();
        if !ok {
            bail!("tmux new-session failed");
        }
        Ok(Self(name.to_string()))
    }

    fn text(&self) -> String {
        Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn keys(&self, keys: &[&str]) -> Result<()> {
        for k in keys {
            Command::new("tmux")
                .args(["send-keys", "-t", &self.0, k])
                .status()?;
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(())
    }

    /// Waits until the pane shows something `ok` accepts; the pane's text then.
    fn wait(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text();
            if ok(&text) {
                return Ok(text);
            }
            if Instant::now() > deadline {
                bail!("{what}: not on the screen after {timeout:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn cursor_visible(&self) -> bool {
        Command::new("tmux")
            .args(["display-message", "-p", "-t", &self.0, "#{cursor_flag}"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

/// `record`, killed if the test ends early.
struct Recording(std::process::Child);

impl Drop for Recording {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The byte values on the pod's row: usage, limit, headroom (as `bytes` prints them).
fn pod_row(screen: &str, name: &str) -> Option<Vec<String>> {
    let line = screen.lines().find(|l| l.contains(name))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    Some(
        words
            .windows(2)
            .filter(|w| matches!(w[1], "B" | "KiB" | "MiB" | "GiB") && w[0].parse::<f64>().is_ok())
            .map(|w| format!("{} {}", w[0], w[1]))
            .collect(),
    )
}

fn mib(cell: &str) -> Option<f64> {
    let (v, unit) = cell.split_once(' ')?;
    let v: f64 = v.parse().ok()?;
    Some(match unit {
        "GiB" => v * 1024.0,
        "MiB" => v,
        "KiB" => v / 1024.0,
        _ => v / 1048576.0,
    })
}

fn read_u64(p: &Path) -> Result<u64> {
    Ok(std::fs::read_to_string(p)?.trim().parse()?)
}

/// The kernel's usage and limit of a memcg (v1 or v2).
fn kernel_usage_limit(memcg: &Path) -> Result<(u64, u64)> {
    if memcg.join("memory.current").exists() {
        Ok((
            read_u64(&memcg.join("memory.current"))?,
            read_u64(&memcg.join("memory.max"))?,
        ))
    } else {
        Ok((
            read_u64(&memcg.join("memory.usage_in_bytes"))?,
            read_u64(&memcg.join("memory.limit_in_bytes"))?,
        ))
    }
}

const VM_ROW: &str = "VM default/vm1";

#[test]
fn top_shows_the_pod_its_classes_and_its_kill_live_and_from_a_capture() -> Result<()> {
    if !require_root("top_shows_the_pod_its_classes_and_its_kill_live_and_from_a_capture") {
        return Ok(());
    }
    let _serial = serial();
    ensure_debian(&[("/usr/bin/tmux", "tmux")])?;
    let bin = oomtrace_bin()?.display().to_string();
    let work = std::env::temp_dir().join(format!("oomtrace-top-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let (pod, container, top_path) = pod_cgroups("oomtrace-test-top", 160 << 20)?;
    let container_s = container.display().to_string();
    let top_s = top_path.display().to_string();

    // The same run recorded, for the replay below.
    let capture = work.join("run.otr");
    let mut record = Recording(
        Command::new(&bin)
            .args(["record", "--cgroup", &top_s, "-o"])
            .arg(&capture)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !capture.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let live = Pane::start(
        "oomtrace-top-live",
        &[bin.clone(), "top".into(), "--cgroup".into(), top_s.clone()],
    )?;
    live.wait("the pods pane", Duration::from_secs(30), |t| {
        t.contains("oomtrace top") && t.contains("pods (")
    })?;

    // The VM: a qemu stand-in whose vCPU writes 96 MiB of guest RAM.
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

    // The pod's row: the kernel's limit, and its usage (read while the row shows it).
    let screen = live.wait("the VM's row at 96 MiB", Duration::from_secs(30), |t| {
        pod_row(t, VM_ROW)
            .is_some_and(|c| c.first().and_then(|u| mib(u)).is_some_and(|u| u >= 96.0))
    })?;
    let (usage, limit) = kernel_usage_limit(&pod.path)?;
    let cells = pod_row(&screen, VM_ROW).context("pod row")?;
    assert_eq!(cells.get(1), Some(&bytes(limit as i64)), "limit: {screen}");
    let shown = cells.first().and_then(|u| mib(u)).context("usage cell")?;
    let kernel = usage as f64 / 1048576.0;
    assert!(
        (shown - kernel).abs() <= kernel * 0.05 + 1.0,
        "usage shown {shown:.1} MiB, the kernel's {kernel:.1} MiB:\n{screen}"
    );

    // The detail screen: the pod's classes and threads.
    live.keys(&["Enter"])?;
    let detail = live.wait("the pod's detail", Duration::from_secs(10), |t| {
        t.contains("pod detail") && t.contains("vcpu") && t.contains("iothread")
    })?;
    assert!(detail.contains("qemu-system-x86"), "{detail}");
    live.keys(&["Escape"])?;

    // The kill: memhold, exec'd into the pod, grows until the kernel kills the qemu.
    let mut memhold = workload(&container_s, "memhold", &["memhold=0@80"], 120)?;
    let screen = live.wait("the kill in the kills pane", Duration::from_secs(40), |t| {
        t.contains("kills (1)")
    })?;
    println!("the live screen at the kill:\n{screen}");
    let kill_line = screen
        .lines()
        .find(|l| l.contains("killed; invoked by"))
        .context("kill line")?;
    assert!(
        kill_line.contains(&format!("({qemu_pid}) killed")) && kill_line.contains("memhold"),
        "{kill_line}"
    );
    let row = screen.lines().find(|l| l.contains(VM_ROW)).context("row")?;
    assert!(row.trim_end().ends_with('1'), "one kill on the row: {row}");
    // Its post-mortem, as tail prints it.
    live.keys(&["Tab", "Enter"])?;
    let pm = live.wait("the post-mortem", Duration::from_secs(10), |t| {
        t.contains("post-mortem") && t.contains("OOM KILL")
    })?;
    assert!(pm.contains("memhold"), "{pm}");

    // q: the terminal as it was (cooked mode, echo, the cursor shown).
    live.keys(&["q"])?;
    // The shell prints how top exited, then the terminal's modes (stty): wait for both.
    let after = live.wait("top's exit", Duration::from_secs(10), |t| {
        t.contains("top exited") && t.lines().any(|l| l.trim().ends_with("echo"))
    })?;
    assert!(after.contains("top exited 0"), "{after}");
    let modes: Vec<&str> = after
        .lines()
        .map(str::trim)
        .filter(|l| l.ends_with("icanon") || l.ends_with("echo"))
        .collect();
    assert_eq!(
        modes,
        ["icanon", "echo"],
        "terminal modes after q:\n{after}"
    );
    assert!(live.cursor_visible(), "the cursor is hidden after q");
    drop(live);
    let _ = (memhold.kill(), memhold.wait(), qemu.kill(), qemu.wait());

    // SIGINT ends the recording.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(record.0.id() as i32, libc::SIGINT) };
    let status = record.0.wait()?;
    assert!(status.success(), "record exited with {status}");
    replay(&bin, &capture, qemu_pid)?;
    drop(pod);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn report_json(bin: &str, capture: &Path, at: Option<f64>) -> Result<Vec<Value>> {
    let mut cmd = Command::new(bin);
    cmd.arg("report").arg(capture).arg("--json");
    if let Some(a) = at {
        cmd.args(["--at", &format!("{a}")]);
    }
    let out = cmd.output()?;
    assert!(
        out.status.success(),
        "report: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn replay(bin: &str, capture: &Path, qemu_pid: u32) -> Result<()> {
    let whole = report_json(bin, capture, None)?;
    let head = whole
        .iter()
        .find(|v| v["type"] == "capture")
        .context("capture line")?;
    let start = head["header"]["start_mono_ns"].as_u64().context("start")?;
    let summary = whole
        .iter()
        .find(|v| v["type"] == "summary")
        .context("summary")?;
    let kill_ns = summary["ooms"][0]["ts_ns"].as_u64().context("the kill")?;
    assert_eq!(summary["ooms"][0]["victim_pid"], qemu_pid);
    let kill_s = (kill_ns - start) as f64 / 1e9;

    // From the start, n seeks to the kill.
    let path = capture.display().to_string();
    let pane = Pane::start(
        "oomtrace-top-replay",
        &[bin.to_string(), "top".into(), "--from".into(), path.clone()],
    )?;
    pane.wait("the replay", Duration::from_secs(20), |t| {
        t.contains("capture ")
    })?;
    pane.keys(&[" ", "n"])?;
    let at_kill = pane.wait("the seek to the kill", Duration::from_secs(10), |t| {
        t.contains("kills (1)") && t.contains("paused")
    })?;
    // Where it stopped: at the kill, or the few inputs after it that make its row.
    let position: f64 = at_kill
        .split(" s of ")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|p| p.parse().ok())
        .context("the position")?;
    assert!(
        position >= kill_s - 0.05 && position <= kill_s + 0.5,
        "stopped at {position} s, the kill at {kill_s:.2} s:\n{at_kill}"
    );
    assert!(at_kill.contains(VM_ROW), "{at_kill}");
    pane.keys(&["q"])?;
    pane.wait("top's exit", Duration::from_secs(10), |t| {
        t.contains("top exited 0")
    })?;
    drop(pane);

    // At a time: the screen says what `report --at` says.
    // Just before the kill: the VM is there (its row), the kill not yet.
    let at = (kill_s - 0.5).max(0.1);
    let pane = Pane::start(
        "oomtrace-top-at",
        &[
            bin.to_string(),
            "top".into(),
            "--from".into(),
            path,
            "--at".into(),
            format!("{at}"),
        ],
    )?;
    let screen = pane.wait("the replay at a time", Duration::from_secs(20), |t| {
        t.contains(VM_ROW)
    })?;
    let report = report_json(bin, capture, Some(at))?;
    let snapshot = report
        .iter()
        .rfind(|v| v["type"] == "snapshot")
        .context("report's snapshot")?;
    let memcg = snapshot["memcgs"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|m| m["vm"] == "default/vm1" && m["pod"]["level"] == "pod")
        })
        .with_context(|| format!("the pod in {snapshot}"))?;
    let cells = pod_row(&screen, VM_ROW).context("row")?;
    let want: Vec<String> = ["usage", "limit", "headroom"]
        .iter()
        .map(|k| bytes(memcg[k].as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(
        cells[..3],
        want[..],
        "top --at {at} vs report --at:\n{screen}"
    );
    assert!(
        screen.contains("kills: none so far"),
        "before the kill:\n{screen}"
    );
    pane.keys(&["q"])?;
    Ok(())
}
