//! Section 7 of BENCHMARKS.md: `oomtrace agent` at rest on a node-sized memcg tree (100 pod
//! memcgs, 10 000 idle threads, scraped every 15 s as Prometheus would), then on a busy one, and
//! what its flight recorder writes per hour in each.
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{load_exe, mib, oomtrace_exe, proc_usage};

const MEMCGS: usize = 100;
const THREADS_PER_MEMCG: usize = 100;
const SETTLE: Duration = Duration::from_secs(15);
const WINDOW: Duration = Duration::from_secs(60);
const SCRAPE_EVERY: Duration = Duration::from_secs(15);
/// Goals of issue 12: an idle node's cost.
const IDLE_CPU_GOAL_PCT: f64 = 0.5;
const IDLE_RSS_GOAL: u64 = 40 << 20;

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scrape(port: u16) -> bool {
    Command::new("curl")
        .args(["-sf", "-m", "5", "-o", "/dev/null"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .status()
        .is_ok_and(|s| s.success())
}

fn flight_bytes(dir: &Path) -> u64 {
    oomtrace::agent::flight_files(&dir.join("flight.otr"))
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// CPU seconds, RSS and recorder bytes over `WINDOW`, scraping meanwhile; `load` runs its
/// workload until the deadline.
fn window(pid: u32, port: u16, dir: &Path, mut load: impl FnMut(Instant)) -> (f64, u64, u64) {
    let (cpu0, _, _) = proc_usage(pid);
    let bytes0 = flight_bytes(dir);
    let end = Instant::now() + WINDOW;
    let mut next_scrape = Instant::now();
    while Instant::now() < end {
        if Instant::now() >= next_scrape {
            scrape(port);
            next_scrape += SCRAPE_EVERY;
        }
        load(next_scrape.min(end));
        std::thread::sleep(
            next_scrape
                .min(end)
                .saturating_duration_since(Instant::now()),
        );
    }
    let (cpu1, _, rss) = proc_usage(pid);
    (cpu1 - cpu0, rss, flight_bytes(dir).saturating_sub(bytes0))
}

pub(super) fn run(root: &Path, md: &mut String, raw: &mut String) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("oomtrace-bench-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut idle = Vec::new();
    for i in 0..MEMCGS {
        let sub = root.join(format!("rest{i}"));
        std::fs::create_dir_all(&sub)?;
        let mut c = Command::new(load_exe()?)
            .args(["threads", "--cgroup", &sub.display().to_string()])
            .args(["--threads", &THREADS_PER_MEMCG.to_string(), "--hold", "900"])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(c.stdout.take().context("stdout")?).read_line(&mut line)?;
        idle.push(Reaped(c));
    }
    let agent = Reaped(
        Command::new(oomtrace_exe()?)
            .args(["agent", "--dir"])
            .arg(&dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--cgroup", &root.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start oomtrace agent")?,
    );
    let pid = agent.0.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !scrape(port) {
        if Instant::now() > deadline {
            bail!("the agent did not answer on port {port}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(SETTLE);
    let (idle_cpu, idle_rss, idle_bytes) = window(pid, port, &dir, |_| {});

    // Busy: workloads come and go in the tree, each touching and freeing 128 MiB.
    let busy_cg = root.join("busy");
    std::fs::create_dir_all(&busy_cg)?;
    let busy_cg = busy_cg.display().to_string();
    let bin = oomtrace_exe()?;
    let mut runs = 0u32;
    let (busy_cpu, busy_rss, busy_bytes) = window(pid, port, &dir, |until| {
        while Instant::now() < until {
            let done = Command::new(&bin)
                .args(["workload", "--process", "busy", "--cgroup", &busy_cg])
                .args(["--thread", "a=64@256/free", "--thread", "b=64@256/free"])
                .args(["--hold", "0"])
                .stdout(Stdio::null())
                .status();
            if done.is_err() {
                break;
            }
            runs += 1;
        }
    });
    let (_, hwm, _) = proc_usage(pid);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    drop(agent);
    drop(idle);
    let _ = std::fs::remove_dir_all(&dir);

    let secs = WINDOW.as_secs_f64();
    let pct = |cpu: f64| cpu / secs * 100.0;
    let per_hour = |b: u64| b as f64 * 3600.0 / secs;
    let _ = writeln!(
        md,
        "## 7. The agent at rest\n\n`oomtrace agent` watching {MEMCGS} memcgs with {THREADS_PER_MEMCG} idle \
         threads each ({} threads), scraped every {} s; {} s after start, then over {} s. Busy: \
         in the same tree, workloads one after another, each touching and freeing 2 × 64 MiB at \
         256 MiB/s ({runs} runs).\n\n\
         | state | CPU (of one core) | RSS | flight recorder per hour | goal | result |\n|---|---|---|---|---|---|\n\
         | idle | {:.2}% | {} | {} | ≤ {IDLE_CPU_GOAL_PCT}% of a core, ≤ {} | {} |\n\
         | busy | {:.2}% | {} | {} | | |\n\
         | peak RSS (VmHWM, start-up included) | | {} | | | |\n",
        MEMCGS * THREADS_PER_MEMCG,
        SCRAPE_EVERY.as_secs(),
        SETTLE.as_secs(),
        WINDOW.as_secs(),
        pct(idle_cpu),
        mib(idle_rss as f64),
        mib(per_hour(idle_bytes)),
        mib(IDLE_RSS_GOAL as f64),
        match (
            pct(idle_cpu) <= IDLE_CPU_GOAL_PCT,
            idle_rss <= IDLE_RSS_GOAL
        ) {
            (true, true) => "met".to_string(),
            (cpu_ok, rss_ok) => format!(
                "**missed**:{}{}",
                if cpu_ok { "" } else { " CPU" },
                if rss_ok { "" } else { " RSS" }
            ),
        },
        pct(busy_cpu),
        mib(busy_rss as f64),
        mib(per_hour(busy_bytes)),
        mib(hwm as f64),
    );
    let _ = writeln!(
        raw,
        "agent: idle {idle_cpu:.2} CPU s, {idle_bytes} recorder bytes; busy {busy_cpu:.2} CPU s, {busy_bytes} bytes, {runs} runs"
    );
    Ok(())
}
