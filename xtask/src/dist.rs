//! `./x dist`: the static binary (x86_64-unknown-linux-musl) and the agent's image FROM scratch.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{is_root, output, run};

pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// The image's names; `deploy/oomtrace.yaml` runs the second.
pub const IMAGE: &str = concat!("oomtrace:", env!("CARGO_PKG_VERSION"));
pub const IMAGE_LATEST: &str = "oomtrace:latest";

/// What `dist` made.
pub struct Dist {
    pub binary: PathBuf,
    pub image_archive: Option<PathBuf>,
}

/// Builds target/static/oomtrace and, with `image`, the image (podman) and its OCI archive
/// target/static/oomtrace-<version>.oci.tar, which `ctr -n k8s.io images import` reads on a node.
pub fn dist(ws: &Path, channel: &str, image: bool) -> Result<Dist> {
    ensure_target(channel)?;
    // zstd's C part is compiled for musl by musl-gcc.
    ensure_command("musl-gcc", "musl-tools")?;
    run(Command::new("cargo")
        .arg(format!("+{channel}"))
        .args(["build", "--quiet", "--profile", "dist", "--target", TARGET])
        .args(["-p", "oomtrace"])
        .current_dir(ws))?;
    // Not target/dist: that is cargo's own directory for the profile's build scripts.
    let out = ws.join("target/static");
    std::fs::create_dir_all(&out)?;
    let binary = out.join("oomtrace");
    // Where cargo put it: CARGO_TARGET_DIR when set (a stale copy under target/ otherwise).
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| ws.join("target"), |d| ws.join(d));
    let built = target_dir.join(TARGET).join("dist/oomtrace");
    // Through a temporary name: a running copy of the old binary keeps its inode.
    let tmp = out.join(".oomtrace.new");
    std::fs::copy(&built, &tmp).with_context(|| format!("cannot copy {}", built.display()))?;
    std::fs::rename(&tmp, &binary)?;
    let ldd = Command::new("ldd").arg(&binary).output();
    if let Ok(ldd) = ldd {
        let said = String::from_utf8_lossy(&ldd.stdout).to_string()
            + &String::from_utf8_lossy(&ldd.stderr);
        // glibc's ldd says "not a dynamic executable" of a static binary and "statically
        // linked" of a static-pie one (ours: its load address is randomised).
        if !said.contains("not a dynamic executable") && !said.contains("statically linked") {
            bail!("{} is not static; ldd says: {said}", binary.display());
        }
    }
    let image_archive = if image {
        ensure_command("podman", "podman")?;
        // Its output is the image id: not worth a line.
        output(
            Command::new("podman")
                .args(["build", "--quiet", "--file"])
                .arg(ws.join("deploy/Containerfile"))
                .args(["--tag", IMAGE, "--tag", IMAGE_LATEST])
                .arg(&out),
        )?;
        let archive = out.join(format!("oomtrace-{}.oci.tar", env!("CARGO_PKG_VERSION")));
        let _ = std::fs::remove_file(&archive);
        run(Command::new("podman")
            .args(["save", "--quiet", "--format", "oci-archive", "--output"])
            .arg(&archive)
            .arg(IMAGE))?;
        Some(archive)
    } else {
        None
    };
    Ok(Dist {
        binary,
        image_archive,
    })
}

fn ensure_target(channel: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "target",
        "list",
        "--installed",
        "--toolchain",
        channel,
    ]))?;
    if !installed.lines().any(|l| l.trim() == TARGET) {
        println!("xtask: installing the {TARGET} standard library for {channel}");
        run(Command::new("rustup").args(["target", "add", TARGET, "--toolchain", channel]))?;
    }
    Ok(())
}

/// A Debian package's command, installed when missing (as root).
fn ensure_command(command: &str, package: &str) -> Result<()> {
    let found = |c: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found(command) {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{command} is missing: install the Debian package {package} (apt-get install {package})"
        );
    }
    println!("xtask: installing {package}");
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}
