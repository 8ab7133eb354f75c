//! Bad input gets one clear line on stderr and a non-zero exit: never a panic.
use std::process::Command;

use anyhow::Result;
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
    assert_one_line_error(
        oomtrace(&["tail", "--duration", "0"])?,
        "--duration must be a positive",
    )?;
    assert_one_line_error(
        oomtrace(&["workload", "--process", "x", "--thread", "nonsense"])?,
        "NAME=MIB@RATE",
    )
}
