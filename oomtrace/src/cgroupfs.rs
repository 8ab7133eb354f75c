//! The memory cgroup filesystem: where the memory controller is (v1 or v2), memcg id ↔ path (the
//! id in the memcg tracepoints is the cgroup directory's inode number, on v1 and v2), usage and limit.
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::memory_stat::{MemoryStat, keyed};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Version {
    V1,
    V2,
}

/// Where the memory controller is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryController {
    pub version: Version,
    pub mount: PathBuf,
}

impl MemoryController {
    /// Finds the memory controller in /proc/self/mountinfo: a v1 `cgroup` mount with the `memory`
    /// option, else a `cgroup2` mount whose cgroup.controllers lists memory.
    pub fn detect() -> Result<Self> {
        let text = fs::read_to_string("/proc/self/mountinfo")
            .context("cannot read /proc/self/mountinfo")?;
        let found = Self::from_mountinfo(&text, |p| {
            fs::read_to_string(p.join("cgroup.controllers"))
                .map(|c| c.split_whitespace().any(|w| w == "memory"))
                .unwrap_or(false)
        });
        found.context("no memory cgroup controller is mounted (neither cgroup v1 `memory` nor cgroup2 with memory)")
    }

    pub fn from_mountinfo(text: &str, v2_has_memory: impl Fn(&Path) -> bool) -> Option<Self> {
        let mut v2 = None;
        for line in text.lines() {
            // mountinfo: id parent maj:min root mountpoint opts [optional...] - fstype source superopts
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mountpoint = left.split_whitespace().nth(4);
            let mut right = right.split_whitespace();
            let (fstype, superopts) = (right.next(), right.nth(1));
            let Some(mountpoint) = mountpoint else {
                continue;
            };
            match fstype {
                Some("cgroup")
                    if superopts.is_some_and(|o| o.split(',').any(|x| x == "memory")) =>
                {
                    return Some(Self {
                        version: Version::V1,
                        mount: PathBuf::from(mountpoint),
                    });
                }
                Some("cgroup2") if v2.is_none() && v2_has_memory(Path::new(mountpoint)) => {
                    v2 = Some(Self {
                        version: Version::V2,
                        mount: PathBuf::from(mountpoint),
                    });
                }
                _ => {}
            }
        }
        v2
    }

    fn usage_file(&self) -> &'static str {
        match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        }
    }

    /// Accepts a full path (/sys/fs/cgroup/memory/x) or one relative to the controller's mount, as
    /// the kernel prints it (/kubepods.slice/...); checks that it is a memory cgroup.
    pub fn resolve(&self, user_path: &str) -> Result<PathBuf> {
        let p = Path::new(user_path);
        let full = if p.starts_with(&self.mount)
            || (p.is_absolute() && p.is_dir() && p.starts_with("/sys"))
        {
            p.to_path_buf()
        } else {
            self.mount.join(user_path.trim_start_matches('/'))
        };
        if !full.is_dir() {
            bail!(
                "cgroup {user_path} does not exist (looked for {})",
                full.display()
            );
        }
        if !full.join(self.usage_file()).exists() {
            bail!(
                "{user_path} is not a memory cgroup ({} has no {})",
                full.display(),
                self.usage_file()
            );
        }
        Ok(full)
    }

    /// The path as the kernel prints it: relative to the controller mount, starting with '/'.
    pub fn display_path(&self, full: &Path) -> String {
        match full.strip_prefix(&self.mount) {
            Ok(rel) if rel.as_os_str().is_empty() => "/".to_string(),
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => full.display().to_string(),
        }
    }

    /// The memory cgroup of a process, from /proc/PID/cgroup.
    pub fn of_pid(&self, pid: u32) -> Result<PathBuf> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .with_context(|| format!("process {pid} does not exist"))?;
        let rel = memcg_line(&text, self.version)
            .with_context(|| format!("process {pid} has no memory cgroup in /proc/{pid}/cgroup"))?;
        Ok(self.mount.join(rel.trim_start_matches('/')))
    }

    /// The kernel's pressure counters of a memcg: v1 memory.failcnt and memory.oom_control; v2
    /// memory.events and memory.pressure (PSI; v1 has none).
    pub fn pressure(&self, full: &Path) -> Option<Pressure> {
        let read = |f: &str| fs::read_to_string(full.join(f)).ok();
        match self.version {
            Version::V1 => Some(Pressure {
                limit_hits: read("memory.failcnt")?.trim().parse().ok()?,
                oom_kills: read("memory.oom_control").and_then(|t| keyed(&t, "oom_kill")),
                ..Pressure::default()
            }),
            Version::V2 => {
                let events = read("memory.events")?;
                let psi = read("memory.pressure");
                let psi_total = |kind: &str| {
                    psi.as_deref()?
                        .lines()
                        .find(|l| l.starts_with(kind))?
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix("total=")?.parse().ok())
                };
                Some(Pressure {
                    limit_hits: keyed(&events, "max")?,
                    high: keyed(&events, "high"),
                    oom_kills: keyed(&events, "oom_kill"),
                    some_us: psi_total("some "),
                    full_us: psi_total("full "),
                })
            }
        }
    }

    /// What kind of memory the memcg holds: memory.stat (and v1's memory.kmem.usage_in_bytes).
    pub fn memory_stat(&self, full: &Path) -> Option<MemoryStat> {
        let text = fs::read_to_string(full.join("memory.stat")).ok()?;
        let kmem = match self.version {
            Version::V1 => fs::read_to_string(full.join("memory.kmem.usage_in_bytes"))
                .ok()
                .and_then(|t| t.trim().parse().ok()),
            Version::V2 => None,
        };
        MemoryStat::parse(self.version, &text, kmem)
    }

    pub fn usage_limit(&self, full: &Path) -> Option<UsageLimit> {
        let read = |f: &str| fs::read_to_string(full.join(f)).ok();
        let (usage, limit, peak) = match self.version {
            Version::V1 => (
                read("memory.usage_in_bytes")?,
                read("memory.limit_in_bytes")?,
                read("memory.max_usage_in_bytes"),
            ),
            Version::V2 => (
                read("memory.current")?,
                read("memory.max")?,
                read("memory.peak"),
            ),
        };
        Some(UsageLimit {
            usage: usage.trim().parse().ok()?,
            limit: parse_limit(&limit),
            peak: peak.and_then(|p| p.trim().parse().ok()),
        })
    }
}

/// The memory line of /proc/PID/cgroup: `4:memory:/x` on v1, `0::/x` on v2.
pub fn memcg_line(text: &str, version: Version) -> Option<String> {
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match version {
            Version::V1 => controllers.split(',').any(|c| c == "memory"),
            Version::V2 => controllers.is_empty(),
        };
        if matches {
            return Some(path.to_string());
        }
    }
    None
}

/// `max` (v2) and the v1 "unlimited" value (PAGE_COUNTER_MAX pages, ≥ 2^62) become None.
pub fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok().filter(|v| *v < (1u64 << 62))
}

/// A memcg's pressure, as the kernel counts it (all cumulative since the memcg was made).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Pressure {
    /// Times usage hit the limit: v1 memory.failcnt, v2 memory.events `max`.
    pub limit_hits: u64,
    /// v2 memory.events `high`: times usage went over memory.high. None on v1.
    pub high: Option<u64>,
    /// OOM kills in this memcg: v1 memory.oom_control `oom_kill` (4.13+), v2 memory.events.
    pub oom_kills: Option<u64>,
    /// PSI (v2 memory.pressure): µs during which some task / all tasks stalled on memory.
    pub some_us: Option<u64>,
    pub full_us: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct UsageLimit {
    pub usage: u64,
    pub limit: Option<u64>,
    /// Highest usage the kernel recorded (v1 memory.max_usage_in_bytes, v2 memory.peak).
    pub peak: Option<u64>,
}

/// memcg id (directory inode) of a cgroup directory.
pub fn memcg_id(full: &Path) -> Result<u64> {
    Ok(fs::metadata(full)
        .with_context(|| format!("cannot stat {}", full.display()))?
        .ino())
}

/// Every cgroup directory at and below `root`, by memcg id. Directories that vanish while we walk
/// are skipped: cgroups come and go.
pub fn walk(root: &Path) -> HashMap<u64, PathBuf> {
    let mut out = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        out.insert(meta.ino(), dir.clone());
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_HYBRID: &str = "\
35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
36 25 0:31 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
40 25 0:35 / /sys/fs/cgroup/memory rw,relatime shared:13 - cgroup cgroup rw,memory
";
    const MOUNTINFO_V2: &str =
        "35 25 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn memory_controller_prefers_v1_memory_mount_on_hybrid_hosts() {
        let c = MemoryController::from_mountinfo(MOUNTINFO_HYBRID, |_| false);
        assert_eq!(
            c,
            Some(MemoryController {
                version: Version::V1,
                mount: "/sys/fs/cgroup/memory".into()
            })
        );
    }

    #[test]
    fn memory_controller_uses_v2_only_when_it_has_memory() {
        let yes = MemoryController::from_mountinfo(MOUNTINFO_V2, |_| true);
        assert_eq!(yes.map(|c| c.version), Some(Version::V2));
        assert_eq!(
            MemoryController::from_mountinfo(MOUNTINFO_V2, |_| false),
            None
        );
        assert_eq!(
            MemoryController::from_mountinfo("garbage\n\n - \u{0}", |_| true),
            None
        );
    }

    #[test]
    fn memcg_line_picks_memory_controller_or_unified_line() {
        let text = "9:name=systemd:/\n4:memory:/kubepods/burstable/pod1\n0::/user.slice\n";
        assert_eq!(
            memcg_line(text, Version::V1).as_deref(),
            Some("/kubepods/burstable/pod1")
        );
        assert_eq!(
            memcg_line(text, Version::V2).as_deref(),
            Some("/user.slice")
        );
        assert_eq!(memcg_line("nonsense", Version::V1), None);
    }

    #[test]
    fn limit_parse_maps_unlimited_values_to_none() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("2472419328\n"), Some(2472419328));
        assert_eq!(parse_limit("junk"), None);
    }

    #[test]
    fn display_path_is_relative_to_the_mount() {
        let c = MemoryController {
            version: Version::V1,
            mount: "/sys/fs/cgroup/memory".into(),
        };
        assert_eq!(
            c.display_path(Path::new("/sys/fs/cgroup/memory/kubepods/x")),
            "/kubepods/x"
        );
        assert_eq!(c.display_path(Path::new("/sys/fs/cgroup/memory")), "/");
    }
}
