//! A memory cgroup made for the demo and the tests: created under the caller's own memory cgroup,
//! given a limit and no swap, and removed (its processes killed first) when dropped.
use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::cgroupfs::{MemoryController, Version};

pub struct ScratchCgroup {
    /// The innermost cgroup, where the limit is.
    pub path: PathBuf,
    /// The outermost cgroup created, removed with everything below it.
    top: PathBuf,
    pub version: Version,
}

impl ScratchCgroup {
    /// `relative` may contain slashes (e.g. a kubepods-shaped path); every level is created, and
    /// the limit is set on the innermost one.
    pub fn create(ctl: &MemoryController, relative: &str, limit: u64) -> Result<Self> {
        let parent = ctl.of_pid(std::process::id())?;
        let relative = relative.trim_start_matches('/');
        let first = relative.split('/').next().unwrap_or(relative);
        let path = parent.join(relative);
        let top = parent.join(first);
        if top.exists() {
            anyhow::bail!(
                "memory cgroup {} already exists; remove it or pick another name",
                top.display()
            );
        }
        let cg = Self {
            path,
            top,
            version: ctl.version,
        };
        fs::create_dir_all(&cg.path)
            .with_context(|| format!("cannot create memory cgroup {}", cg.path.display()))?;
        cg.set_limit(limit)?;
        Ok(cg)
    }

    pub fn set_limit(&self, limit: u64) -> Result<()> {
        let write = |f: &str, v: String| {
            fs::write(self.path.join(f), v)
                .with_context(|| format!("cannot write {f} in {}", self.path.display()))
        };
        match self.version {
            Version::V1 => {
                write("memory.limit_in_bytes", limit.to_string())?;
                let _ = write("memory.swappiness", "0".into());
                if self.path.join("memory.memsw.limit_in_bytes").exists() {
                    let _ = write("memory.memsw.limit_in_bytes", limit.to_string());
                }
            }
            Version::V2 => {
                write("memory.max", limit.to_string())?;
                let _ = write("memory.swap.max", "0".into());
            }
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for dir in crate::cgroupfs::walk(&self.top).into_values() {
            if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
                out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
        out
    }
}

fn remove_tree(path: &Path) {
    let mut dirs: Vec<PathBuf> = crate::cgroupfs::walk(path).into_values().collect();
    // Deepest first.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = fs::remove_dir(&d);
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                // SAFETY: kill with a pid read from this cgroup's own cgroup.procs.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        remove_tree(&self.top);
    }
}
