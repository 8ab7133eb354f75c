//! Bad input gets one clear line on stderr and a non-zero exit: never a panic.
use std::process::Command;

use anyhow::Result;
use tests::{oomtrace_bin, require_root};

fn run(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(oomtrace_bin()?).args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn assert_one_line_error(args: &[&str], needle: &str) -> Result<()> {
    let (code, stdout, stderr) = run(args)?;
    assert_eq!(code, 1, "{args:?}: exit code; stderr: {stderr}");
    assert!(stdout.is_empty(), "{args:?}: nothing on stdout, got {stdout}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: one line, got {stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr:?} should mention {needle:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}

#[test]
fn missing_cgroup_path_is_one_line_error() -> Result<()> {
    if !require_root("missing_cgroup_path_is_one_line_error") {
        return Ok(());
    }
    assert_one_line_error(&["tail", "--cgroup", "/no/such/cgroup-oomtrace"], "does not exist")
}

#[test]
fn path_that_is_not_a_memory_cgroup_is_one_line_error() -> Result<()> {
    if !require_root("path_that_is_not_a_memory_cgroup_is_one_line_error") {
        return Ok(());
    }
    assert_one_line_error(&["tail", "--cgroup", "/sys/kernel"], "is not a memory cgroup")
}

#[test]
fn missing_pid_is_one_line_error() -> Result<()> {
    if !require_root("missing_pid_is_one_line_error") {
        return Ok(());
    }
    assert_one_line_error(&["tail", "--pid", "2147483646"], "does not exist")
}

#[test]
fn non_root_user_is_told_to_use_root() -> Result<()> {
    if !require_root("non_root_user_is_told_to_use_root") {
        return Ok(());
    }
    let bin = oomtrace_bin()?;
    let bin = bin.to_string_lossy();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", &bin, "tail"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
    Ok(())
}

#[test]
fn bad_option_values_are_rejected() -> Result<()> {
    let (code, _, stderr) = run(&["tail", "--duration", "-3"])?;
    assert_ne!(code, 0, "{stderr}");
    let (code, _, stderr) = run(&["workload", "--process", "x", "--thread", "nonsense"])?;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("NAME=MIB@RATE"), "{stderr}");
    Ok(())
}
