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
            ("/usr/sbin/modinfo", "kmod"),
            ("/usr/bin/xz", "xz-utils"),
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

/// The stock kernels the tests boot: Debian bookworm's 6.1, bookworm-backports' 6.12 and the
/// newest Debian kernel (trixie-backports, 6.19 when written; the first with the memcg
/// tracepoints, so every tier runs there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Series {
    /// bullseye's 5.10: `try_charge`, page-based `__mem_cgroup_charge`, no nr_memory.
    Debian5_10,
    Debian6_1,
    Debian6_12,
    TrixieBackports,
}

impl Series {
    pub const ALL: [Series; 4] = [
        Series::Debian5_10,
        Series::Debian6_1,
        Series::Debian6_12,
        Series::TrixieBackports,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Series::Debian5_10 => "debian-5.10",
            Series::Debian6_1 => "debian-6.1",
            Series::Debian6_12 => "debian-6.12",
            Series::TrixieBackports => "debian-trixie-backports",
        }
    }

    /// (apt suite, package name pattern, version prefix to sort by).
    fn apt(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Series::Debian5_10 => (
                "bullseye",
                r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64$",
                "linux-image-5.10.0-",
            ),
            Series::Debian6_1 => (
                "bookworm",
                r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$",
                "linux-image-6.1.0-",
            ),
            Series::Debian6_12 => (
                "bookworm-backports",
                r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$",
                "linux-image-6.12.",
            ),
            Series::TrixieBackports => (
                "trixie-backports",
                r"^linux-image-[0-9]+\.[0-9]+\.[0-9]+\+deb13-cloud-amd64$",
                "linux-image-",
            ),
        }
    }
}

/// An unpacked kernel package: its bzImage, release string and modules tree.
#[derive(Clone, Debug)]
pub struct GuestKernel {
    pub series: Series,
    pub release: String,
    pub vmlinuz: PathBuf,
    pub root: PathBuf,
}

/// The newest Debian 6.1 cloud kernel image the archive has, downloaded and unpacked once.
pub fn debian_cloud_kernel() -> Result<PathBuf> {
    Ok(kernel(Series::Debian6_1)?.vmlinuz)
}

/// The newest cloud kernel of `series`, downloaded and unpacked once per run.
pub fn kernel(series: Series) -> Result<GuestKernel> {
    static KERNELS: Mutex<Vec<(Series, Result<GuestKernel, String>)>> = Mutex::new(Vec::new());
    let mut done = KERNELS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, k)) = done.iter().find(|(s, _)| *s == series) {
        return k.clone().map_err(anyhow::Error::msg);
    }
    let k = fetch_kernel(series).map_err(|e| format!("{e:#}"));
    done.push((series, k.clone()));
    k.map_err(anyhow::Error::msg)
}

/// apt options for a private package list of `suite` under the kit dir: the host's apt
/// configuration is left alone (bookworm-backports is not in it).
fn apt_options(suite: &str) -> Result<Vec<String>> {
    if suite == "bookworm" {
        return Ok(Vec::new());
    }
    let dir = kit_dir().join(format!("apt-{suite}"));
    fs::create_dir_all(dir.join("lists/partial"))?;
    fs::create_dir_all(dir.join("cache/archives/partial"))?;
    let sources = dir.join("sources.list");
    fs::write(
        &sources,
        format!("deb http://deb.debian.org/debian {suite} main\n"),
    )?;
    let opts = vec![
        format!("-oDir::Etc::SourceList={}", sources.display()),
        "-oDir::Etc::SourceParts=/dev/null".to_string(),
        format!("-oDir::State::Lists={}", dir.join("lists").display()),
        format!("-oDir::Cache={}", dir.join("cache").display()),
    ];
    if !dir.join("updated").exists() {
        run(Command::new("apt-get").args(&opts).arg("update"))
            .with_context(|| format!("cannot read the package list of {suite}"))?;
        fs::write(dir.join("updated"), "")?;
    }
    Ok(opts)
}

/// "6.12.38" / "27" → numbers to sort package versions by.
fn version_key(rest: &str) -> Vec<u32> {
    rest.split(|c: char| !c.is_ascii_digit())
        .take_while(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn fetch_kernel(series: Series) -> Result<GuestKernel> {
    let dir = kit_dir().join("kernel");
    fs::create_dir_all(&dir)?;
    let (suite, pattern, prefix) = series.apt();
    let opts = apt_options(suite)?;
    let list =
        run(Command::new("apt-cache")
            .args(&opts)
            .args(["search", "--names-only", pattern]))?;
    let mut pkgs: Vec<(Vec<u32>, String)> = list
        .lines()
        .filter_map(|l| {
            let name = l.split_whitespace().next()?;
            Some((version_key(name.strip_prefix(prefix)?), name.to_string()))
        })
        .collect();
    pkgs.sort();
    let (_, pkg) = pkgs
        .pop()
        .with_context(|| format!("apt ({suite}) has no package matching {pattern}"))?;
    let root = dir.join(&pkg);
    let found = |root: &Path| -> Option<GuestKernel> {
        // Newer packages: usr/lib/modules/<release>/vmlinuz.
        let modules = fs::read_dir(root.join("usr/lib/modules"))
            .ok()
            .and_then(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .find(|p| p.join("vmlinuz").exists())
            });
        if let Some(m) = modules {
            return Some(GuestKernel {
                series,
                release: m.file_name()?.to_str()?.to_string(),
                vmlinuz: m.join("vmlinuz"),
                root: root.to_path_buf(),
            });
        }
        let vmlinuz = fs::read_dir(root.join("boot"))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })?;
        let release = vmlinuz
            .file_name()?
            .to_str()?
            .strip_prefix("vmlinuz-")?
            .to_string();
        Some(GuestKernel {
            series,
            release,
            vmlinuz,
            root: root.to_path_buf(),
        })
    };
    if let Some(k) = found(&root) {
        return Ok(k);
    }
    let unpack = |pkg: &str| -> Result<()> {
        run(Command::new("apt-get")
            .args(&opts)
            .args(["download", pkg])
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
        Ok(())
    };
    unpack(&pkg)?;
    if found(&root).is_none() {
        // Newer packaging: linux-image-X only depends on linux-binary-X (the kernel) and
        // linux-modules-X.
        let abi = pkg.trim_start_matches("linux-image-");
        unpack(&format!("linux-binary-{abi}"))?;
        unpack(&format!("linux-modules-{abi}"))?;
    }
    found(&root).context("the kernel package has no boot/vmlinuz-*")
}

/// Init-script lines loading `modules` (guest paths) in order, each one's complaint prefixed
/// `INSMOD: ` on the console.
pub fn insmod_lines(modules: &[String]) -> String {
    modules
        .iter()
        .map(|m| format!("insmod {m} 2>&1 | sed 's/^/INSMOD: /'\n"))
        .collect()
}

/// kvm and kvm_amd of `k` with their dependencies, in insmod order.
pub fn kvm_modules(k: &GuestKernel) -> Result<Vec<PathBuf>> {
    modules(k, &["kvm_amd"])
}

/// The modules `names` of `k` with their dependencies, in insmod order, decompressed (busybox
/// insmod does not read .ko.xz) into the kit dir. Module dependencies come from `modinfo`.
pub fn modules(k: &GuestKernel, names: &[&str]) -> Result<Vec<PathBuf>> {
    let moddir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| k.root.join(d).join(&k.release))
        .find(|d| d.join("kernel").is_dir())
        .with_context(|| format!("no modules of {} in {}", k.release, k.root.display()))?;
    let mut index = std::collections::HashMap::new();
    let mut stack = vec![moddir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("no modules at {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                let base = n.trim_end_matches(".xz").trim_end_matches(".zst");
                if let Some(m) = base.strip_suffix(".ko") {
                    index.insert(m.replace('-', "_"), p.clone());
                }
            }
        }
    }
    let out_dir = kit_dir().join(format!("modules-{}", k.release));
    fs::create_dir_all(&out_dir)?;
    let mut order: Vec<PathBuf> = Vec::new();
    fn visit(
        name: &str,
        index: &std::collections::HashMap<String, PathBuf>,
        out_dir: &Path,
        order: &mut Vec<PathBuf>,
        depth: usize,
    ) -> Result<()> {
        // Not a module file: built into the kernel.
        let Some(src) = index.get(name) else {
            return Ok(());
        };
        let ko = out_dir.join(format!("{name}.ko"));
        if order.contains(&ko) || depth > 16 {
            return Ok(());
        }
        if !ko.exists() {
            if src.extension().is_some_and(|e| e == "xz") {
                let data = run_bytes(Command::new("xz").arg("-dc").arg(src))?;
                fs::write(&ko, data)?;
            } else {
                fs::copy(src, &ko)?;
            }
        }
        let deps = run(Command::new("modinfo").args(["-F", "depends"]).arg(&ko))?;
        for d in deps.trim().split(',').filter(|d| !d.is_empty()) {
            visit(&d.replace('-', "_"), index, out_dir, order, depth + 1)?;
        }
        order.push(ko);
        Ok(())
    }
    for name in names {
        // Built in (CONFIG_...=y): nothing to load.
        if index.contains_key(*name) {
            visit(name, &index, &out_dir, &mut order, 0)?;
        }
    }
    Ok(order)
}

fn run_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// The first lines of a guest's /init that traces memcgs: the kernel filesystems, tracefs, and
/// cgroup v2 with the memory controller on for the cgroups it makes.
pub const MEMCG_V2_INIT_HEAD: &str = "#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tracefs none /sys/kernel/tracing 2>/dev/null
mount -t cgroup2 none /sys/fs/cgroup
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
";

/// A newc initramfs with busybox (and its applet links) and `init` as /init.
pub fn initramfs(name: &str, init: &str) -> Result<PathBuf> {
    initramfs_with(name, init, &[], &[])
}

/// The host programs `bins` go into the initramfs at the same paths, with the shared libraries
/// `ldd` names for them, so they run in the guest as on the host; `files` are copied as
/// (host path, path in the guest).
pub fn initramfs_with(
    name: &str,
    init: &str,
    bins: &[&Path],
    files: &[(&Path, &str)],
) -> Result<PathBuf> {
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
        // Debug info is most of a debug build; the guest unpacks every byte of the initramfs.
        let inside = dir.join(bin.strip_prefix("/").unwrap_or(bin));
        let _ = Command::new("strip")
            .arg("--strip-debug")
            .arg(&inside)
            .status();
    }
    for (from, to) in files {
        let to = dir.join(to.trim_start_matches('/'));
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(from, &to)
            .with_context(|| format!("cannot copy {} into the initramfs", from.display()))?;
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
///
/// `-cpu max` for nested SVM (kvm_amd in the guest), minus cx16: qemu 7.2's TCG emulation of
/// cmpxchg16b corrupts the slab freelists of Debian's 6.12 kernel (its per-CPU 128-bit cmpxchg):
/// 2 of 8 bare boots died (double fault in kmem_cache_alloc, list corruption in
/// kmem_cache_free) with cx16 and none of 36 without it. The kernel falls back to its emulation.
pub fn qemu_command(kernel: &Path, initrd: &Path, append: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine",
        "pc",
        "-accel",
        "tcg",
        "-cpu",
        "max,-cx16",
        "-smp",
        "1",
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
