//! Project tasks: `setup` (install what is missing), `demo`, `test`, `dist`, `fuzz`, `bench`,
//! `soak`. Run through `./x`.
mod dist;
mod fuzz;
mod soak;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: rust-src for the pinned nightly, bpf-linker built against its LLVM.
    Setup,
    /// Set up, build, and run `oomtrace demo` (needs root).
    Demo {
        #[arg(long)]
        json: bool,
    },
    /// Set up, build, and run every test: unit, property and end-to-end on the real kernel,
    /// then the kernel matrix (vm-test).
    Test,
    /// The kernel matrix: Debian 6.1, 6.12 and the newest backports kernel booted under qemu,
    /// every tier forced in turn, memcg OOMs and nested KVM inside each (needs root).
    VmTest,
    /// The static binary (target/static/oomtrace, x86_64-unknown-linux-musl) and the agent's image
    /// FROM scratch (podman; saved as target/static/oomtrace-<version>.oci.tar).
    Dist {
        /// Only the binary.
        #[arg(long)]
        no_image: bool,
    },
    /// Fuzz every parser of outside input (cargo-fuzz, libFuzzer) for SECONDS each (default
    /// 60), or only the named targets. Crashes land in fuzz/artifacts/<target>/. Not part of
    /// the tests.
    Fuzz {
        #[arg(default_value_t = 60)]
        seconds: u64,
        targets: Vec<String>,
    },
    /// The agent for MINUTES (default 60) under thread churn, pods made and removed, an OOM
    /// kill every 3 minutes and ring-buffer bursts: its RSS, fds, map entries and drops every
    /// minute, as a table for BENCHMARKS.md (needs root). Not part of the tests.
    Soak {
        #[arg(default_value_t = 60)]
        minutes: u64,
    },
    /// Set up, build (release), and measure oomtrace's costs into BENCHMARKS.md (needs root).
    /// Not part of the tests: it takes minutes and its numbers are for reading, not asserting.
    Bench {
        #[arg(long, default_value_t = 7)]
        pairs: usize,
        #[arg(long, default_value_t = 1_000_000)]
        churn: usize,
    },
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Default)]
struct Counts {
    passed: u64,
    failed: u64,
    skipped: u64,
    ok: bool,
    /// Names of the failed tests, printed again at the end: CI shows only the tail of a long run.
    failed_names: Vec<String>,
    /// Each failed test's panic message (its first lines), printed with its name at the end.
    panics: Vec<(String, Vec<String>)>,
}

/// Lines of a panic message kept for the closing summary.
const PANIC_LINES: usize = 8;

impl Counts {
    fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.ok &= other.ok;
        self.failed_names.extend(other.failed_names);
        self.panics.extend(other.panics);
    }

    /// The closing lines of a run; an error when anything failed.
    fn finish(&self) -> Result<()> {
        for name in &self.failed_names {
            println!("xtask: FAILED {name}");
            for (_, lines) in self.panics.iter().filter(|(t, _)| t == name) {
                for l in lines {
                    println!("xtask:   {l}");
                }
            }
        }
        println!(
            "tests: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        );
        if self.failed > 0 || !self.ok {
            bail!("tests failed");
        }
        Ok(())
    }
}

/// Runs cargo test, passing its output through, and adds up libtest's "test result" lines and our
/// tests' "SKIPPED" lines.
fn run_tests(cmd: &mut Command) -> Result<Counts> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut counts = Counts::default();
    // The panic being collected: (thread name, lines so far).
    let mut panic: Option<(String, Vec<String>)> = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        println!("{line}");
        if let Some((_, lines)) = panic.as_mut() {
            let done = lines.len() >= PANIC_LINES
                || line.is_empty()
                || line.starts_with("stack backtrace:")
                || line.starts_with("note: ");
            if done {
                counts.panics.extend(panic.take());
            } else {
                lines.push(line.clone());
                continue;
            }
        }
        if let Some(thread) = line
            .strip_prefix("thread '")
            .and_then(|r| r.split_once('\''))
            .filter(|(_, rest)| rest.contains("panicked at"))
            .map(|(name, _)| name.to_string())
        {
            panic = Some((thread, vec![line.clone()]));
        } else if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| {
                rest.split([';', '.'])
                    .find_map(|p| {
                        p.trim()
                            .strip_suffix(word)
                            .and_then(|n| n.trim().parse::<u64>().ok())
                    })
                    .unwrap_or(0)
            };
            counts.passed += num("passed");
            counts.failed += num("failed");
        } else if line.starts_with("SKIPPED ") {
            counts.skipped += 1;
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            counts.failed_names.push(name.to_string());
        }
    }
    counts.panics.extend(panic.take());
    counts.ok = child.wait()?.success();
    // A skipped test also counts as passed in libtest; report it once, as skipped.
    counts.passed = counts.passed.saturating_sub(counts.skipped);
    Ok(counts)
}

fn pinned_channel() -> Result<String> {
    let text = std::fs::read_to_string(workspace().join("rust-toolchain.toml"))?;
    text.lines()
        .find_map(|l| {
            l.trim().strip_prefix("channel").map(|r| {
                r.trim_start_matches([' ', '='])
                    .trim()
                    .trim_matches('"')
                    .to_string()
            })
        })
        .context("rust-toolchain.toml has no channel")
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

/// bpf-linker must be built against the same LLVM as the nightly that compiles the eBPF crate
/// ("Invalid record" otherwise). A marker next to it records which one it was built for.
fn ensure_bpf_linker(channel: &str) -> Result<()> {
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{channel}"))
            .args(["--print", "sysroot"]),
    )?;
    let sysroot = PathBuf::from(sysroot.trim());
    let lib_dir = sysroot.join("lib");
    let llvm_lib = std::fs::read_dir(&lib_dir)?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM-") && n.contains("-rust-") && n.ends_with(".so"))
        .context("the pinned nightly ships no libLLVM-*-rust-*.so")?;
    let llvm_lib = llvm_lib
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_string();
    let major = llvm_lib
        .trim_start_matches("LLVM-")
        .split('-')
        .next()
        .unwrap_or("")
        .to_string();
    let marker = cargo_home().join("bin").join(".bpf-linker-built-for");
    let wanted = format!("{channel} {llvm_lib}\n");
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works && std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(());
    }
    println!("xtask: installing bpf-linker 0.13.0 against {llvm_lib} (about a minute)");
    let rustflags = format!(
        "-L native={d} -l dylib={llvm_lib} -C link-arg=-Wl,-rpath,{d}",
        d = lib_dir.display()
    );
    run(Command::new("cargo")
        .arg(format!("+{channel}"))
        .args([
            "install",
            "bpf-linker@0.13.0",
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major},no-llvm-linking"))
        .env("RUSTFLAGS", rustflags))?;
    std::fs::write(&marker, wanted)?;
    Ok(())
}

fn ensure_components(channel: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        channel,
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("xtask: installing rust-src for {channel}");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", channel]))?;
    }
    Ok(())
}

fn setup() -> Result<String> {
    let channel = pinned_channel()?;
    ensure_components(&channel)?;
    ensure_bpf_linker(&channel)?;
    Ok(channel)
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `cargo fmt --check` and clippy with warnings as errors (as aya-template's test script):
/// the names of those that failed.
fn lint(ws: &std::path::Path, channel: &str) -> Vec<String> {
    let checks: [(&str, &[&str]); 2] = [
        (
            "lint: cargo fmt --all --check",
            &["fmt", "--all", "--check"],
        ),
        (
            "lint: cargo clippy --all-targets -D warnings",
            &[
                "clippy",
                "-p",
                "oomtrace",
                "-p",
                "oomtrace-common",
                "-p",
                "tests",
                "-p",
                "xtask",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, args)| {
            run(Command::new("cargo")
                .arg(format!("+{channel}"))
                .args(*args)
                .current_dir(ws))
            .inspect_err(|e| println!("xtask: {e:#}"))
            .is_err()
        })
        .map(|(name, _)| name.to_string())
        .collect()
}

/// The kernel matrix, one kernel at a time (each boots a qemu guest), timed.
fn vm_test(ws: &std::path::Path, channel: &str) -> Result<Counts> {
    let start = Instant::now();
    let counts = run_tests(
        Command::new("cargo")
            .arg(format!("+{channel}"))
            .args([
                "test",
                "-p",
                "tests",
                "--test",
                "vm_matrix",
                "--",
                "--show-output",
                "--test-threads",
                "1",
            ])
            .current_dir(ws),
    )?;
    println!(
        "xtask: kernel matrix (vm-test) took {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(counts)
}

/// The release oomtrace and the benchmark binary (tests' oomtrace-bench: the load generators
/// and the benchmarks, kept out of the shipped binary).
fn build_bench(ws: &Path, channel: &str) -> Result<()> {
    for args in [
        &["-p", "oomtrace"][..],
        &["-p", "tests", "--bin", "oomtrace-bench"],
    ] {
        run(Command::new("cargo")
            .arg(format!("+{channel}"))
            .args(["build", "--quiet", "--release"])
            .args(args)
            .current_dir(ws))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let ws = workspace().canonicalize().unwrap_or_else(|_| workspace());
    match cli.task {
        Task::Setup => {
            setup()?;
        }
        Task::Demo { json } => {
            let channel = setup()?;
            run(Command::new("cargo")
                .arg(format!("+{channel}"))
                .args(["build", "--quiet", "--release", "-p", "oomtrace"])
                .current_dir(&ws))?;
            if !is_root() {
                bail!(
                    "the demo loads eBPF programs and makes a memory cgroup: run it as root (sudo ./x demo)"
                );
            }
            let bin = ws.join("target/release/oomtrace");
            let mut cmd = Command::new(&bin);
            cmd.arg("demo");
            if json {
                cmd.arg("--json");
            }
            run(&mut cmd)?;
        }
        Task::Bench { pairs, churn } => {
            let channel = setup()?;
            build_bench(&ws, &channel)?;
            if !is_root() {
                bail!(
                    "the benchmarks load eBPF programs and make memory cgroups: run them as root (sudo ./x bench)"
                );
            }
            // bpftrace is the peer a user would reach for instead; measured when it installs.
            if !std::path::Path::new("/usr/bin/bpftrace").exists() {
                let _ = Command::new("apt-get")
                    .args(["install", "-y", "--no-install-recommends", "bpftrace"])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .status();
            }
            run(Command::new(ws.join("target/release/oomtrace-bench"))
                .env("OOMTRACE_BIN", ws.join("target/release/oomtrace"))
                .args(["bench", "--out"])
                .arg(ws.join("BENCHMARKS.md"))
                .args(["--pairs", &pairs.to_string(), "--churn", &churn.to_string()])
                .current_dir(&ws))?;
        }
        Task::Dist { no_image } => {
            let channel = setup()?;
            let made = dist::dist(&ws, &channel, !no_image)?;
            println!("xtask: static binary {}", made.binary.display());
            if let Some(archive) = made.image_archive {
                println!(
                    "xtask: image {} (also {}), saved as {}",
                    dist::IMAGE,
                    dist::IMAGE_LATEST,
                    archive.display()
                );
            }
        }
        Task::Soak { minutes } => {
            let channel = setup()?;
            build_bench(&ws, &channel)?;
            if !is_root() {
                bail!("the soak loads eBPF programs and makes memory cgroups: run it as root");
            }
            soak::soak(
                &ws.join("target/release/oomtrace"),
                &ws.join("target/release/oomtrace-bench"),
                &ws.join("BENCHMARKS.md"),
                minutes,
            )?;
        }
        Task::Fuzz { seconds, targets } => {
            let channel = setup()?;
            fuzz::run(&ws, &channel, seconds, &targets)?;
        }
        Task::VmTest => {
            let channel = setup()?;
            vm_test(&ws, &channel)?.finish()?;
        }
        Task::Test => {
            let channel = setup()?;
            let start = Instant::now();
            if !is_root() {
                println!("xtask: not root: the kernel tests will be skipped and say so");
            }
            // Lint first, and fail the run at its end: every test still runs.
            let lint_failed = lint(&ws, &channel);
            run(Command::new("cargo")
                .arg(format!("+{channel}"))
                .args(["build", "-p", "oomtrace"])
                .current_dir(&ws))?;
            let mut counts = run_tests(
                Command::new("cargo")
                    .arg(format!("+{channel}"))
                    // Every test binary runs even when one fails: a run reports all failures.
                    .args(["test", "--no-fail-fast", "--"])
                    .args(["--show-output", "--skip", "vm_matrix_"])
                    .current_dir(&ws),
            )?;
            counts.add(vm_test(&ws, &channel)?);
            for name in lint_failed {
                counts.failed += 1;
                counts.failed_names.push(name);
            }
            println!("xtask: tests took {:.0} s", start.elapsed().as_secs_f64());
            // One plain closing line for the whole run (cargo's last line is a crate's own count).
            counts.finish()?;
        }
    }
    Ok(())
}
