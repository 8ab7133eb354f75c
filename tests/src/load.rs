//! Load generators for the benchmarks (hidden subcommands): a page-fault storm that times itself,
//! many idle threads across many memcgs, and thread churn. Each joins its memcg first.
use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

const PAGE: usize = 4096;

fn join(cgroup: &str) -> Result<()> {
    std::fs::write(
        format!("{cgroup}/cgroup.procs"),
        std::process::id().to_string(),
    )
    .with_context(|| format!("cannot join cgroup {cgroup}"))
}

/// A fresh anonymous mapping without THP; every page written once; then unmapped.
/// Returns ns per page of the touching loop.
fn touch_fresh(bytes: usize) -> Result<f64> {
    // SAFETY: anonymous private mapping, no fd; the result is checked before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        bail!("mmap failed: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `p` is a fresh mapping of `bytes`; madvise only sets a hint on it.
    unsafe { libc::madvise(p, bytes, libc::MADV_NOHUGEPAGE) };
    let base = p.cast::<u8>();
    let start = Instant::now();
    for off in (0..bytes).step_by(PAGE) {
        // SAFETY: off < bytes, inside the writable mapping; volatile so the write stays.
        unsafe { std::ptr::write_volatile(base.add(off), 1) };
    }
    let ns = start.elapsed().as_nanos() as f64 / (bytes / PAGE) as f64;
    // SAFETY: unmapping exactly the mapping made above.
    unsafe { libc::munmap(p, bytes) };
    Ok(ns)
}

/// A fresh anonymous page, written and kept: the calling thread is charged for it.
fn touch_keep() -> Result<()> {
    // SAFETY: anonymous private mapping of one page, no fd; checked before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        bail!("mmap failed: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the page was just mapped writable.
    unsafe { std::ptr::write_volatile(p.cast::<u8>(), 1) };
    Ok(())
}

/// `storm`: `rounds` times, touch `mib` MiB of fresh pages; prints `ns_per_page X` per round.
pub fn storm(cgroup: &str, mib: usize, rounds: usize) -> Result<()> {
    join(cgroup)?;
    for _ in 0..rounds {
        let ns = touch_fresh(mib << 20)?;
        println!("ns_per_page {ns:.1}");
    }
    Ok(())
}

/// `threads`: `n` threads that each touch one page and then sleep `hold` seconds.
pub fn idle_threads(cgroup: &str, n: usize, hold: u64) -> Result<()> {
    join(cgroup)?;
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let h = thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = touch_keep();
                thread::sleep(Duration::from_secs(hold));
            })
            .context("cannot start a thread")?;
        handles.push(h);
    }
    println!("ready");
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// `churn`: `n` short-lived threads, `parallel` at a time, each touching one fresh page.
pub fn churn(cgroup: &str, n: usize, parallel: usize) -> Result<()> {
    join(cgroup)?;
    let mut done = 0;
    while done < n {
        let batch = parallel.min(n - done);
        let hs: Vec<_> = (0..batch)
            .map(|_| {
                thread::Builder::new().stack_size(64 * 1024).spawn(|| {
                    let _ = touch_fresh(PAGE);
                })
            })
            .collect::<Result<_, _>>()
            .context("cannot start a thread")?;
        for h in hs {
            let _ = h.join();
        }
        done += batch;
    }
    println!("churned {done}");
    Ok(())
}
