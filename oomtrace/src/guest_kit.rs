//! A real guest for the tests and the benchmarks: a stock Debian cloud kernel (apt-get download +
//! dpkg-deb -x) and a busybox initramfs whose /init the caller writes, booted by a real
//! qemu-system-x86_64 (TCG). What is missing is installed with apt: qemu-system-x86,
//! busybox-static, cpio.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, OnceLock},
};

use anyhow::{Context as _, Result, bail};

/// Where downloads and initramfs images live (under target/, so a clean clone starts fresh).
pub fn kit_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("guest-kit")
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// apt-get install the packages whose binaries are missing (once per test run).
pub fn ensure_tools() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let need: Vec<&str> = [
            ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
            ("/bin/busybox", "busybox-static"),
            ("/usr/bin/cpio", "cpio"),
        ]
        .iter()
        .filter(|(bin, _)| !Path::new(bin).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
        if need.is_empty() {
            return Ok(());
        }
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&need)
            .env("DEBIAN_FRONTEND", "noninteractive"))
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// The newest Debian 6.1 cloud kernel image the archive has, downloaded and unpacked once.
pub fn debian_cloud_kernel() -> Result<PathBuf> {
    static KERNEL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    KERNEL
        .get_or_init(|| fetch_kernel().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn fetch_kernel() -> Result<PathBuf> {
    let dir = kit_dir().join("kernel");
    fs::create_dir_all(&dir)?;
    let list = run(Command::new("apt-cache").args([
        "search",
        "--names-only",
        r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$",
    ]))?;
    let mut pkgs: Vec<(u32, String)> = list
        .lines()
        .filter_map(|l| {
            let name = l.split_whitespace().next()?;
            let abi: u32 = name
                .strip_prefix("linux-image-6.1.0-")?
                .split('-')
                .next()?
                .parse()
                .ok()?;
            Some((abi, name.to_string()))
        })
        .collect();
    pkgs.sort();
    let (_, pkg) = pkgs
        .pop()
        .context("apt has no linux-image-6.1.0-*-cloud-amd64 package")?;
    let root = dir.join(&pkg);
    let vmlinuz = |root: &Path| -> Option<PathBuf> {
        fs::read_dir(root.join("boot"))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
    };
    if let Some(k) = vmlinuz(&root) {
        return Ok(k);
    }
    run(Command::new("apt-get")
        .args(["download", &pkg])
        .current_dir(&dir))?;
    let deb = fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
        })
        .context("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let _ = fs::remove_file(&deb);
    vmlinuz(&root).context("the kernel package has no boot/vmlinuz-*")
}

/// A newc initramfs with busybox (and its applet links) and `init` as /init.
pub fn initramfs(name: &str, init: &str) -> Result<PathBuf> {
    initramfs_with(name, init, &[])
}

/// The host programs `bins` go into the initramfs at the same paths, with the shared libraries
/// `ldd` names for them, so they run in the guest as on the host.
pub fn initramfs_with(name: &str, init: &str, bins: &[&Path]) -> Result<PathBuf> {
    ensure_tools()?;
    let dir = kit_dir().join(format!("initramfs-{name}"));
    let _ = fs::remove_dir_all(&dir);
    for d in ["bin", "sbin", "proc", "sys", "dev", "tmp", "mnt"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).context("busybox-static is needed")?;
    let applets = run(Command::new("/bin/busybox").arg("--list"))?;
    for a in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(a));
    }
    for bin in bins {
        let mut files = vec![bin.to_path_buf()];
        let libs = run(Command::new("ldd").arg(bin)).unwrap_or_default();
        files.extend(
            libs.split_whitespace()
                .filter(|w| w.starts_with('/'))
                .map(PathBuf::from),
        );
        for f in files {
            let rel = f.strip_prefix("/").unwrap_or(&f);
            let to = dir.join(rel);
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::copy(&f, &to)
                .with_context(|| format!("cannot copy {} into the initramfs", f.display()))?;
        }
    }
    fs::write(dir.join("init"), init)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.join("init"), fs::Permissions::from_mode(0o755))?;
    let image = kit_dir().join(format!("initramfs-{name}.cpio"));
    let file = fs::File::create(&image)?;
    let status = Command::new("sh")
        .args(["-c", "find . | cpio -o -H newc --quiet"])
        .current_dir(&dir)
        .stdout(Stdio::from(file))
        .status()
        .context("cannot run cpio")?;
    if !status.success() {
        bail!("cpio failed: {status}");
    }
    Ok(image)
}

/// The qemu command line for a small TCG guest; callers add -name, -object, -m and so on.
pub fn qemu_command(kernel: &Path, initrd: &Path, append: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine", "pc", "-accel", "tcg", "-cpu", "max", "-smp", "1",
    ])
    .args([
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", &format!("console=ttyS0 panic=-1 {append}")]);
    cmd
}
