//! `./x soak [MINUTES]`: the agent for a long run under a node's worst habits — threads made and
//! ended without pause, pods made and removed, an OOM kill every few minutes, bursts of thread
//! churn meant to overflow the ring buffer — with its resident memory, open descriptors, map
//! entries and drops sampled every minute. After warm-up, memory and descriptors must stay flat;
//! every drop is counted. Prints a Markdown table for BENCHMARKS.md. Not part of the tests.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The memory controller's mount and its limit file (v1 or v2).
fn memory_controller() -> Result<(PathBuf, &'static str)> {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() {
        return Ok((v1.to_path_buf(), "memory.limit_in_bytes"));
    }
    let v2 = Path::new("/sys/fs/cgroup");
    if std::fs::read_to_string(v2.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
    {
        let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+memory");
        return Ok((v2.to_path_buf(), "memory.max"));
    }
    bail!("no memory controller found under /sys/fs/cgroup")
}

fn make_cgroup(path: &Path, limit_file: &str, limit: u64) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot make {}", path.display()))?;
    std::fs::write(path.join(limit_file), limit.to_string())
        .with_context(|| format!("cannot limit {}", path.display()))
}

/// Removes a cgroup once its processes are gone (a few tries: exits take a moment).
fn remove_cgroup(path: &Path) {
    for _ in 0..50 {
        if std::fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metrics(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// A metric's samples by one label, e.g. "ring 5000, skipped_runs 3" (zeros left out).
fn by_label(text: &str, name: &str, label: &str) -> String {
    let key = format!("{label}=\"");
    let parts: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| {
            let v: f64 = l.rsplit(' ').next()?.parse().ok()?;
            let at = l.find(&key)? + key.len();
            let value = l[at..].split('"').next()?;
            (v > 0.0).then(|| format!("{value} {}", v as u64))
        })
        .collect();
    if parts.is_empty() {
        "0".to_string()
    } else {
        parts.join(", ")
    }
}

/// The sum of a metric's samples (every label set).
fn sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Entries in the agent's (thread, memcg) charge map, by bpftool; None without it.
fn charge_entries() -> Option<usize> {
    let out = Command::new("bpftool")
        .args(["map", "dump", "name", "CHARGES", "-j"])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .matches("\"key\"")
            .count()
    })
}

struct Sample {
    minute: u64,
    rss_kib: u64,
    fds: usize,
    charge_entries: Option<usize>,
    events: u64,
    dropped: String,
    kills: u64,
    pods_made: u64,
}

/// Where this section of BENCHMARKS.md starts (`oomtrace-bench bench` keeps it).
const HEADING: &str = "## Soak";

/// Replaces (or adds) the soak's section at the end of `file`.
fn write_section(file: &Path, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(file).unwrap_or_default();
    let kept = old.find(HEADING).map_or(old.as_str(), |at| &old[..at]);
    std::fs::write(file, format!("{}\n\n{section}", kept.trim_end()))
        .with_context(|| format!("cannot write {}", file.display()))
}

/// `bin` is the oomtrace under test, `load` the load generator (tests' oomtrace-bench).
pub fn soak(bin: &Path, load: &Path, out: &Path, minutes: u64) -> Result<()> {
    if minutes == 0 {
        bail!("give the soak at least one minute");
    }
    if !Path::new("/usr/sbin/bpftool").exists() {
        for args in [
            &["update", "-qq"][..],
            &["install", "-y", "-qq", "--no-install-recommends", "bpftool"],
        ] {
            let _ = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let (mount, limit_file) = memory_controller()?;
    let top = mount.join(format!("oomtrace-soak-{}", std::process::id()));
    make_cgroup(&top, limit_file, 8 << 30)?;
    let work = std::env::temp_dir().join(format!("oomtrace-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let top_s = top.display().to_string();
    let agent = Killed(
        Command::new(bin)
            .args(["agent", "--dir"])
            .arg(work.join("state"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--cgroup",
                &top_s,
                "--max-disk",
                "64M",
                "--keep-kills",
                "20",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join("agent.log"))?)
            .spawn()
            .context("cannot start the agent")?,
    );
    let pid = agent.0.id();
    let started = Instant::now();
    while metrics(port).is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the agent did not answer on its port (see {})",
                work.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let end = Instant::now() + Duration::from_secs(minutes * 60);
    let stop = Arc::new(AtomicBool::new(false));
    let pods_made = Arc::new(AtomicU64::new(0));

    // Threads made and ended without pause.
    let churn_cg = top.join("churn");
    make_cgroup(&churn_cg, limit_file, 1 << 30)?;
    let _churn = Killed(
        Command::new(load)
            .args(["churn", "--cgroup"])
            .arg(&churn_cg)
            .args(["--threads", "1000000000", "--parallel", "8"])
            .stdout(Stdio::null())
            .spawn()?,
    );
    // Pods made and removed; every third minute one grows to its OOM kill; every fifth a
    // burst of 64 parallel threads at a time.
    let pods = {
        let (stop, pods_made, top, bin, load) = (
            stop.clone(),
            pods_made.clone(),
            top.clone(),
            bin.to_path_buf(),
            load.to_path_buf(),
        );
        std::thread::spawn(move || {
            let mut i = 0u64;
            let mut last_oom = Instant::now();
            let mut last_burst = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let oom = last_oom.elapsed() >= Duration::from_secs(180);
                let pod = top.join(format!("pod-{i}"));
                if make_cgroup(&pod, limit_file, if oom { 64 << 20 } else { 256 << 20 }).is_err() {
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
                pods_made.fetch_add(1, Ordering::Relaxed);
                let mut cmd = Command::new(&bin);
                cmd.args(["workload", "--cgroup"]).arg(&pod);
                if oom {
                    last_oom = Instant::now();
                    cmd.args(["--process", "memhold", "--thread", "memhold=0@128"]);
                    cmd.args(["--hold", "20"]);
                } else {
                    cmd.args([
                        "--process",
                        "qemu-system-x86",
                        "--thread",
                        "CPU 0/KVM=32@64",
                    ]);
                    cmd.args(["--thread", "IO iothread1=4@8", "--hold", "3"]);
                }
                if let Ok(mut c) = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
                    let _ = c.wait();
                }
                if last_burst.elapsed() >= Duration::from_secs(300) {
                    last_burst = Instant::now();
                    let _ = Command::new(&load)
                        .args(["churn", "--cgroup"])
                        .arg(&pod)
                        .args(["--threads", "200000", "--parallel", "64"])
                        .stdout(Stdio::null())
                        .status();
                }
                remove_cgroup(&pod);
            }
        })
    };

    let mut samples = Vec::new();
    let mut next = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += Duration::from_secs(60);
        let text = metrics(port).unwrap_or_default();
        let s = Sample {
            minute: samples.len() as u64 + 1,
            rss_kib: status_kib(pid, "VmRSS:").unwrap_or(0),
            fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
            charge_entries: charge_entries(),
            events: sum(&text, "oomtrace_events_total"),
            dropped: by_label(&text, "oomtrace_dropped_events_total", "kind"),
            kills: sum(&text, "oomtrace_oom_kills_total"),
            pods_made: pods_made.load(Ordering::Relaxed),
        };
        println!(
            "soak: minute {:>3}: RSS {:>6} KiB, {:>3} fds, {:>6} charge entries, {:>10} events, {} dropped, {} kills, {} pods",
            s.minute,
            s.rss_kib,
            s.fds,
            s.charge_entries
                .map_or_else(|| "-".to_string(), |n| n.to_string()),
            s.events,
            s.dropped,
            s.kills,
            s.pods_made
        );
        samples.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = pods.join();
    drop(_churn);
    let alive = std::fs::metadata(format!("/proc/{pid}")).is_ok();
    drop(agent);
    remove_cgroup(&churn_cg);
    remove_cgroup(&top);

    // After warm-up (the first quarter, at least a minute), how far memory and fds moved.
    let warm = samples.len().div_ceil(4).max(1).min(samples.len());
    let after = &samples[warm.saturating_sub(1)..];
    let range = |f: &dyn Fn(&Sample) -> u64| {
        let lo = after.iter().map(f).min().unwrap_or(0);
        let hi = after.iter().map(f).max().unwrap_or(0);
        (lo, hi)
    };
    let (rss_lo, rss_hi) = range(&|s| s.rss_kib);
    let (fd_lo, fd_hi) = range(&|s| s.fds as u64);
    let mut table = String::from(
        "| minute | RSS (KiB) | fds | charge-map entries | events | dropped (by kind) | OOM kills | pods made |\n\
         | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |\n",
    );
    for s in &samples {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.minute,
            s.rss_kib,
            s.fds,
            s.charge_entries
                .map_or_else(|| "-".to_string(), |n| n.to_string()),
            s.events,
            s.dropped,
            s.kills,
            s.pods_made
        ));
    }
    let verdict = format!(
        "{minutes} min; after minute {warm} (warm-up): RSS {rss_lo}..{rss_hi} KiB ({:+} KiB), \
         fds {fd_lo}..{fd_hi}; the agent {} at the end",
        rss_hi as i64 - rss_lo as i64,
        if alive { "alive" } else { "GONE" },
    );
    println!(
        "\n{table}\nsoak: {verdict}; its log: {}",
        work.join("agent.log").display()
    );
    let section = format!(
        "{HEADING}\n\nProduced by `sudo ./x soak {minutes}`: `oomtrace agent` watching a scratch \
         memcg tree while, the whole time, threads are made and ended 8 at a time; pods (memcgs) \
         are made, run a qemu-named workload (vCPU 32 MiB, iothread 4 MiB) and are removed; every \
         3 minutes one pod is limited to 64 MiB and a memhold grows in it to its OOM kill; every \
         5 minutes 200000 threads are churned 64 at a time. Sampled every minute: the agent's \
         VmRSS and open fds, the (thread, memcg) charge map's entries (bpftool), and its own \
         counters from /metrics.\n\n{table}\nResult: {verdict}.\n"
    );
    write_section(out, &section)?;
    if !alive {
        bail!("the agent died during the soak");
    }
    Ok(())
}
