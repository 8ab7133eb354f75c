//! Bad input gets one clear line on stderr and a non-zero exit: never a panic.
use std::process::Command;

use anyhow::{Context as _, Result};
use tests::{oomtrace_bin, require_root};

fn oomtrace(args: &[&str]) -> Result<Command> {
    let mut cmd = Command::new(oomtrace_bin()?);
    cmd.args(args);
    Ok(cmd)
}

/// Exit 1, nothing on stdout, exactly one line on stderr that mentions `needle`, no panic.
fn assert_one_line_error(mut cmd: Command, needle: &str) -> Result<()> {
    let out = cmd.output()?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{cmd:?}: exit code; stderr: {stderr}"
    );
    assert!(
        stdout.is_empty(),
        "{cmd:?}: nothing on stdout, got {stdout}"
    );
    assert_eq!(stderr.lines().count(), 1, "{cmd:?}: one line, got {stderr}");
    assert!(
        stderr.contains(needle),
        "{cmd:?}: {stderr:?} should mention {needle:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}

/// A value clap's parser refuses: its usage error (exit 2), the first line naming the option and
/// what is wrong, then only clap's pointer to --help.
fn assert_usage_error(mut cmd: Command, needles: &[&str]) -> Result<()> {
    let out = cmd.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{cmd:?}: exit code; stderr: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{cmd:?}: nothing on stdout");
    let first = stderr.lines().next().unwrap_or_default();
    for n in needles {
        assert!(first.contains(n), "{cmd:?}: {first:?} should mention {n:?}");
    }
    let rest: Vec<&str> = stderr
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        rest.len() <= 1,
        "{cmd:?}: one line and clap's pointer, got {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}

#[test]
fn missing_cgroup_path_is_one_line_error() -> Result<()> {
    if !require_root("missing_cgroup_path_is_one_line_error") {
        return Ok(());
    }
    assert_one_line_error(
        oomtrace(&["tail", "--cgroup", "/no/such/cgroup-oomtrace"])?,
        "does not exist",
    )
}

#[test]
fn path_that_is_not_a_memory_cgroup_is_one_line_error() -> Result<()> {
    if !require_root("path_that_is_not_a_memory_cgroup_is_one_line_error") {
        return Ok(());
    }
    assert_one_line_error(
        oomtrace(&["tail", "--cgroup", "/sys/kernel"])?,
        "is not a memory cgroup",
    )
}

#[test]
fn missing_pid_is_one_line_error() -> Result<()> {
    if !require_root("missing_pid_is_one_line_error") {
        return Ok(());
    }
    assert_one_line_error(
        oomtrace(&["tail", "--pid", "2147483646"])?,
        "does not exist",
    )
}

#[test]
fn non_root_user_is_told_to_use_root() -> Result<()> {
    if !require_root("non_root_user_is_told_to_use_root") {
        return Ok(());
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(oomtrace_bin()?)
        .arg("tail");
    assert_one_line_error(cmd, "needs root")
}

#[test]
fn bad_option_values_are_rejected() -> Result<()> {
    // clap's own usage error (exit 2) for a value it cannot take.
    let out = oomtrace(&["tail", "--duration", "-3"])?.output()?;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_usage_error(
        oomtrace(&["tail", "--duration", "0"])?,
        &["--duration", "more than zero"],
    )?;
    assert_usage_error(
        oomtrace(&["record", "-o", "x.otr", "--duration", "5 parsecs"])?,
        &["--duration", "not a duration"],
    )?;
    // Durations as people type them: a capture read at 2 minutes and at 1.5 (seconds).
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/data/golden-capture-v1.otr");
    for at in ["2m", "1.5", "500ms"] {
        let out = oomtrace(&["report", golden, "--at", at, "--window", "1s"])?.output()?;
        assert_eq!(
            out.status.code(),
            Some(0),
            "--at {at}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_one_line_error(
        oomtrace(&["workload", "--process", "x", "--thread", "nonsense"])?,
        "NAME=MIB@RATE",
    )
}

fn scratch_file(name: &str, content: &[u8]) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("oomtrace-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let p = dir.join(name);
    std::fs::write(&p, content)?;
    Ok(p)
}

#[test]
fn explain_without_a_report_or_with_garbage_is_one_line_error() -> Result<()> {
    let text = scratch_file(
        "no-report.log",
        b"[ 1.0] eth0: link up\n[ 2.0] usb 1-1: new\n",
    )?;
    assert_one_line_error(
        oomtrace(&["explain", &text.display().to_string()])?,
        "no OOM report found",
    )?;
    // Pseudo-random bytes (xorshift), newlines and NULs included.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let garbage: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let bin = scratch_file("garbage.bin", &garbage)?;
    assert_one_line_error(
        oomtrace(&["explain", &bin.display().to_string()])?,
        "no OOM report found",
    )?;
    assert_one_line_error(
        oomtrace(&["explain", "/no/such/kernel.log"])?,
        "cannot open",
    )?;
    assert_one_line_error(oomtrace(&["explain", "/"])?, "is a directory")?;
    assert_one_line_error(
        oomtrace(&["explain", "-", "--guest-memory", "lots"])?,
        "--guest-memory",
    )
}

#[test]
fn explain_of_a_report_cut_mid_line_gives_partial_results_with_a_warning() -> Result<()> {
    let seed = include_str!("../data/seed-example3-memhold-dmesg.log");
    let cut = &seed[..seed.find("Killed process").unwrap_or(seed.len()) + 25];
    let p = scratch_file("cut.log", cut.as_bytes())?;
    let out = oomtrace(&["explain", &p.display().to_string()])?.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CPU 1/KVM (vcpu)"), "{stdout}");
    assert!(stdout.contains("memhold"), "{stdout}");
    assert!(
        stdout.contains("warning") && stdout.contains("Killed process"),
        "the cut is reported: {stdout}"
    );
    Ok(())
}

/// A 1 GiB file without a single newline is streamed, not slurped: explain's peak RSS stays small.
#[test]
fn explain_of_a_1_gib_file_keeps_memory_bounded() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("oomtrace-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let p = dir.join("big.log");
    let f = std::fs::File::create(&p)?;
    f.set_len(1 << 30)?;
    let child = oomtrace(&["explain", &p.display().to_string()])?
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(r, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 1,
        "status {status}"
    );
    let max_rss_kib = usage.ru_maxrss;
    assert!(
        max_rss_kib < 64 * 1024,
        "peak RSS {max_rss_kib} KiB reading a 1 GiB file"
    );
    Ok(())
}

/// On this host (no kprobes; fentry refused), doctor asks the kernel and reports both refusals.
#[test]
fn doctor_asks_the_kernel_about_fentry_and_kprobes() -> Result<()> {
    if !require_root("doctor_asks_the_kernel_about_fentry_and_kprobes") {
        return Ok(());
    }
    let out = oomtrace(&["doctor", "--json"])?.output()?;
    assert_eq!(out.status.code(), Some(0));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let kf = &d["kernel_functions"];
    // Whatever the kernel says, it is one of the two answers, and it agrees with tracefs on kprobes.
    assert!(
        kf["fentry"].get("Ok").is_some() || kf["fentry"].get("Err").is_some(),
        "{kf}"
    );
    assert_eq!(
        kf["kprobe"].get("Ok").is_some(),
        d["kprobes"] == true,
        "{d}"
    );
    // The kinds it says a memcg's counters give are the keys the kernel's own memory.stat has
    // (the root memcg's); each one missing says why.
    let ctl = oomtrace::cgroupfs::MemoryController::detect()?;
    let stat = std::fs::read_to_string(ctl.mount.join("memory.stat"))?;
    let has = |key: &str| stat.lines().any(|l| l.split(' ').next() == Some(key));
    let kinds = d["memory_kinds"]["per_memcg"]
        .as_array()
        .context("memory_kinds.per_memcg")?;
    for k in kinds {
        let kind = k["kind"].as_str().unwrap_or_default();
        if [
            "sock",
            "slab",
            "pagetables",
            "sec_pagetables",
            "kernel_stack",
        ]
        .contains(&kind)
        {
            assert_eq!(
                k["available"] == true,
                has(kind),
                "{kind}: {k} vs memory.stat"
            );
        }
        assert_eq!(k["available"] == false, k["why_not"].is_string(), "{k}");
    }
    let per_thread = d["memory_kinds"]["per_thread"]
        .as_array()
        .context("memory_kinds.per_thread")?;
    assert!(
        per_thread
            .iter()
            .any(|k| k["kind"] == "anon" && k["available"] == true),
        "{per_thread:?}"
    );
    Ok(())
}

/// The tier plan follows what the kernel said: the doctor's per-hook tiers agree with its
/// fentry/kprobe answers, and forcing a tier the kernel refused fails in one line that names
/// the hook and the reason. (On this build machine: fentry EPERM, no kprobes, so both fail and
/// the charge hook runs on its tracepoint.)
#[test]
fn forced_tier_the_kernel_refuses_names_the_hook_and_reason() -> Result<()> {
    if !require_root("forced_tier_the_kernel_refuses_names_the_hook_and_reason") {
        return Ok(());
    }
    let out = oomtrace(&["doctor", "--json"])?.output()?;
    let d: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let charge = d["hooks"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["hook"] == "charge"))
        .context("charge hook")?
        .clone();
    for (tier, answer) in [
        ("fentry", &d["kernel_functions"]["fentry"]),
        ("kprobe", &d["kernel_functions"]["kprobe"]),
    ] {
        let Some(err) = answer.get("Err").and_then(|e| e.as_str()) else {
            continue;
        };
        assert_ne!(charge["tier"], tier, "{charge}");
        assert!(
            charge["reason"].as_str().is_some_and(|r| r.contains(err)),
            "the plan says why {tier} is not used: {charge}"
        );
        let mut cmd = oomtrace(&["tail", "--duration", "1", "--tier", tier])?;
        cmd.stdin(std::process::Stdio::null());
        assert_one_line_error(cmd, &format!("hook charge: the forced {tier} tier"))?;
    }
    Ok(())
}

#[test]
fn agent_bad_conditions_are_one_line_errors() -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("oomtrace-agent-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let dir = tmp.join("state");
    let dir_s = dir.display().to_string();
    // The port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    assert_one_line_error(
        oomtrace(&["agent", "--dir", &dir_s, "--listen", &addr])?,
        "cannot listen on",
    )?;
    // DIR is a file.
    let file = tmp.join("a-file");
    std::fs::write(&file, "x")?;
    assert_one_line_error(
        oomtrace(&["agent", "--dir", &file.display().to_string()])?,
        "is not a directory",
    )?;
    // Durations and sizes people type wrong.
    assert_usage_error(
        oomtrace(&["agent", "--dir", &dir_s, "--before", "ten minutes"])?,
        &["--before", "not a duration"],
    )?;
    assert_one_line_error(
        oomtrace(&["agent", "--dir", &dir_s, "--max-disk", "12k"])?,
        "--max-disk",
    )?;
    // Metrics open to the network only when asked for.
    let never = tmp.join("never-made");
    for addr in ["0.0.0.0:0", "[::]:0"] {
        assert_one_line_error(
            oomtrace(&[
                "agent",
                "--dir",
                &never.display().to_string(),
                "--listen",
                addr,
            ])?,
            "--listen-beyond-loopback",
        )?;
    }
    assert!(!never.exists(), "refused before anything was made");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// A DIR the agent cannot write (a read-only file system: the same for root as another owner's
/// directory is without CAP_DAC_OVERRIDE) is a setting to fix: one line and exit 1, whether
/// DIR/kills is missing or the flight recorder's file cannot be created.
#[test]
fn agent_dir_not_writable_is_one_line_error() -> Result<()> {
    if !require_root("agent_dir_not_writable_is_one_line_error") {
        return Ok(());
    }
    let tmp = std::env::temp_dir().join(format!("oomtrace-agent-ro-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let mount = |opts: &str| -> Result<()> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "oomtrace-test"])
            .arg(&tmp)
            .status()?
            .success();
        anyhow::ensure!(ok, "cannot mount a tmpfs at {}", tmp.display());
        Ok(())
    };
    mount("size=1m,mode=0700")?;
    let with_kills = tmp.join("with-kills");
    std::fs::create_dir_all(with_kills.join("kills"))?;
    std::fs::create_dir_all(tmp.join("empty"))?;
    mount("remount,ro")?;
    let result = (|| -> Result<()> {
        for (dir, needle) in [
            ("empty", "kills: Read-only file system"),
            ("with-kills", "flight.otr: Read-only file system"),
        ] {
            let dir = tmp.join(dir).display().to_string();
            let mut cmd = oomtrace(&["agent", "--dir", &dir, "--listen", "127.0.0.1:0"])?;
            cmd.env_remove("RUST_LOG");
            assert_one_line_error(cmd, needle)?;
        }
        Ok(())
    })();
    let _ = Command::new("umount").arg(&tmp).status();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// `top` draws on a terminal: piped, it says what to use instead (before loading anything, so
/// without root too); a bad --every is one line as well.
#[test]
fn top_without_a_terminal_points_to_tail() -> Result<()> {
    let mut cmd = oomtrace(&["top"])?;
    cmd.stdin(std::process::Stdio::null());
    assert_one_line_error(cmd, "tail --by class")?;
    Ok(())
}
