//! `./x fuzz [SECONDS] [TARGET...]`: every fuzz target of fuzz/ (cargo-fuzz on the pinned
//! nightly, which has the sanitizers), each for SECONDS, from its committed seeds; a crash fails
//! the task and names the input libFuzzer saved.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

/// The fuzz targets and the seed directories each starts from (besides its own corpus).
const TARGETS: &[(&str, &[&str])] = &[
    (
        "explain",
        &["tests/data", "tests/data/corpus", "fuzz/seeds/explain"],
    ),
    ("capture", &["fuzz/seeds/capture", "tests/data"]),
    ("kubepods_path", &["fuzz/seeds/kubepods_path"]),
    ("cmdline", &["fuzz/seeds/cmdline"]),
    ("bundle", &["fuzz/seeds/bundle"]),
    ("memory_stat", &["fuzz/seeds/memory_stat"]),
];

fn ensure_cargo_fuzz(channel: &str) -> Result<()> {
    let have = Command::new("cargo")
        .arg(format!("+{channel}"))
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        println!("xtask: installing cargo-fuzz");
        crate::run(Command::new("cargo").arg(format!("+{channel}")).args([
            "install",
            "cargo-fuzz",
            "--locked",
        ]))?;
    }
    Ok(())
}

pub fn run(ws: &Path, channel: &str, seconds: u64, only: &[String]) -> Result<()> {
    ensure_cargo_fuzz(channel)?;
    if let Some(bad) = only.iter().find(|t| !TARGETS.iter().any(|(n, _)| n == t)) {
        let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
        bail!("no fuzz target {bad}; the targets are {}", names.join(", "));
    }
    let mut failed = Vec::new();
    for (target, seeds) in TARGETS {
        if !only.is_empty() && !only.iter().any(|t| t == target) {
            continue;
        }
        // libFuzzer writes what it finds into the first directory: the target's own corpus,
        // kept out of git; the committed seeds are read only.
        let corpus = ws.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        let mut cmd = Command::new("cargo");
        cmd.arg(format!("+{channel}"))
            .args(["fuzz", "run", "--fuzz-dir", "fuzz", target])
            .arg(&corpus)
            .args(seeds.iter().map(|s| ws.join(s)).filter(|p| p.is_dir()))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1"])
            .current_dir(ws);
        println!("xtask: fuzzing {target} for {seconds} s");
        if crate::run(&mut cmd).is_err() {
            failed.push(*target);
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (the inputs are in fuzz/artifacts/<target>/; run one with \
             `cargo fuzz run --fuzz-dir fuzz <target> <input>`)",
            failed.join(", ")
        );
    }
    println!("xtask: every fuzz target ran {seconds} s without a crash");
    Ok(())
}
