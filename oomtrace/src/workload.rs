//! The demo's and the tests' workload: processes and threads named like a KubeVirt VM pod's
//! (qemu-system-x86 with "CPU 0/KVM" and "IO iothread1" threads, a "memhold" sidecar), each
//! touching a known number of anonymous pages at a known rate. Hidden subcommand `workload`.
use std::{
    ffi::CString,
    io::Write as _,
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

const MIB: usize = 1 << 20;

/// One allocating thread: name, MiB to touch (0 = until killed), MiB per second, whether it
/// unmaps what it touched once done (then lives on), and whether it touches shmem (a memfd, as
/// a memfd-backed guest's RAM or a tmpfs file) instead of anonymous memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Toucher {
    pub name: String,
    pub mib: usize,
    pub rate: f64,
    pub free: bool,
    pub shmem: bool,
    /// Fills socket buffers instead: a loopback TCP connection whose receiver never reads,
    /// written up to MIB MiB or until the kernel takes no more.
    pub sock: Option<Sock>,
}

/// Which end of a loopback connection whose receiver never reads a toucher is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sock {
    /// Both ends, in this thread.
    Pair,
    /// Listens on 127.0.0.1:PORT, accepts one connection, never reads it (and holds it).
    Receive(u16),
    /// Connects to 127.0.0.1:PORT (retrying until it listens) and writes.
    Send(u16),
}

/// `NAME=MIB@RATE[/free][/shmem][/sock|/sock-rx:PORT|/sock-tx:PORT]`, e.g. `CPU 0/KVM=0@40`,
/// `IO iothread1=16@4`, `virtlogd=12@400/free`, `virtiofsd=8@100/shmem` or `passt=8@40/sock`.
pub fn parse_toucher(s: &str) -> Result<Toucher> {
    let (name, rest) = s.rsplit_once('=').context("expected NAME=MIB@RATE")?;
    let (mib, rate) = rest.split_once('@').context("expected NAME=MIB@RATE")?;
    let mut parts = rate.split('/');
    let rate = parts.next().unwrap_or_default();
    let (mut free, mut shmem, mut sock) = (false, false, None);
    for flag in parts {
        let port = |p: &str| p.parse::<u16>().context("a port must be a number");
        match flag.split_once(':') {
            _ if flag == "free" => free = true,
            _ if flag == "shmem" => shmem = true,
            _ if flag == "sock" => sock = Some(Sock::Pair),
            Some(("sock-rx", p)) => sock = Some(Sock::Receive(port(p)?)),
            Some(("sock-tx", p)) => sock = Some(Sock::Send(port(p)?)),
            _ => bail!(
                "unknown toucher flag /{flag} (free, shmem, sock, sock-rx:PORT, sock-tx:PORT)"
            ),
        }
    }
    let t = Toucher {
        name: name.to_string(),
        mib: mib.parse().context("MIB must be a whole number")?,
        rate: rate.parse().context("RATE must be a number (MiB/s)")?,
        free,
        shmem,
        sock,
    };
    if t.name.is_empty() || t.rate <= 0.0 {
        bail!("thread name must not be empty and RATE must be > 0");
    }
    Ok(t)
}

fn set_current_thread_name(name: &str) {
    let truncated: String = name.chars().take(15).collect();
    if let Ok(c) = CString::new(truncated) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
    }
}

/// Maps 1 MiB of anonymous memory without THP and writes one byte per page, so this thread is the
/// one the kernel charges for each page.
fn touch_one_mib() -> Result<*mut libc::c_void> {
    // SAFETY: anonymous private mapping, no fd; the result is checked before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MIB,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        bail!("mmap failed: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `p` is a fresh MIB-sized mapping; madvise only sets a hint on it.
    unsafe { libc::madvise(p, MIB, libc::MADV_NOHUGEPAGE) };
    let base = p.cast::<u8>();
    for off in (0..MIB).step_by(4096) {
        // SAFETY: off < MIB, inside the writable mapping; volatile so the write is not elided.
        unsafe { std::ptr::write_volatile(base.add(off), 1) };
    }
    Ok(p)
}

/// A qemu stand-in's guest RAM: one anonymous mapping of the `-m` size, as qemu makes it
/// (address, size), and the next MiB of it a vCPU thread will touch.
static GUEST_RAM: OnceLock<(usize, usize)> = OnceLock::new();
static GUEST_NEXT: AtomicUsize = AtomicUsize::new(0);

fn map_guest_ram(mib: usize) -> Result<()> {
    let size = mib * MIB;
    let guard = 4096;
    // Inaccessible guard pages on both sides keep the kernel from merging the mapping with a
    // neighbouring one: it stays exactly `-m` in size, as qemu's is.
    // SAFETY: anonymous private mapping, no fd; the result is checked before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size + 2 * guard,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        bail!(
            "mmap of guest RAM failed: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the inner `size` bytes lie inside the fresh mapping of `size + 2 * guard`.
    let ram = unsafe { p.cast::<u8>().add(guard) }.cast::<libc::c_void>();
    // SAFETY: `ram..ram + size` is inside the mapping; mprotect and madvise only change its
    // protection and a hint.
    let ok = unsafe { libc::mprotect(ram, size, libc::PROT_READ | libc::PROT_WRITE) } == 0;
    if !ok {
        bail!(
            "mprotect of guest RAM failed: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: as above.
    unsafe { libc::madvise(ram, size, libc::MADV_NOHUGEPAGE) };
    let _ = GUEST_RAM.set((ram as usize, size));
    Ok(())
}

/// Touches the next MiB of guest RAM (one byte per page); None once all of it is touched.
fn touch_guest_mib() -> Option<()> {
    let (base, size) = *GUEST_RAM.get()?;
    let off = GUEST_NEXT.fetch_add(MIB, Ordering::Relaxed);
    if off + MIB > size {
        return None;
    }
    for page in (0..MIB).step_by(4096) {
        // SAFETY: off + page < size: inside the writable guest RAM mapping; volatile so the
        // write is not elided.
        unsafe { std::ptr::write_volatile((base + off + page) as *mut u8, 1) };
    }
    Some(())
}

/// A vCPU thread of a stand-in with guest RAM writes into it, as a guest does.
fn is_vcpu_name(name: &str) -> bool {
    name.starts_with("CPU ") && (name.ends_with("/KVM") || name.ends_with("/TCG"))
}

/// Maps 1 MiB of a fresh memfd (shared) and writes one byte per page: shmem this thread charges.
/// The memfd's descriptor is closed; its pages live as long as the mapping.
fn touch_one_shmem_mib() -> Result<*mut libc::c_void> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"oomtrace-workload".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        bail!("memfd_create failed: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is the memfd just made; ftruncate and mmap only size and map it.
    let p = unsafe {
        if libc::ftruncate(fd, MIB as libc::off_t) != 0 {
            libc::MAP_FAILED
        } else {
            libc::mmap(
                std::ptr::null_mut(),
                MIB,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: `fd` is ours; the mapping (if made) keeps the memfd alive.
    unsafe { libc::close(fd) };
    if p == libc::MAP_FAILED {
        bail!("memfd mapping failed: {err}");
    }
    let base = p.cast::<u8>();
    for off in (0..MIB).step_by(4096) {
        // SAFETY: off < MIB, inside the writable mapping; volatile so the write is not elided.
        unsafe { std::ptr::write_volatile(base.add(off), 1) };
    }
    Ok(p)
}

/// A loopback TCP connection whose receiver never reads: what the sender writes fills the
/// receiver's buffer (charged in softirq as the loopback delivers it) and then its own send
/// queue (charged by the sender). Dropped, both are freed.
struct UnreadConnection {
    sender: Option<std::net::TcpStream>,
    _receiver: Option<std::net::TcpStream>,
}

impl UnreadConnection {
    fn open(role: Sock) -> Result<Self> {
        use std::net::{TcpListener, TcpStream};
        let (sender, receiver) = match role {
            Sock::Pair => {
                let listener = TcpListener::bind(("127.0.0.1", 0))?;
                let sender = TcpStream::connect(listener.local_addr()?)?;
                (Some(sender), Some(listener.accept()?.0))
            }
            Sock::Receive(port) => {
                let listener = TcpListener::bind(("127.0.0.1", port))?;
                (None, Some(listener.accept()?.0))
            }
            Sock::Send(port) => {
                let deadline = Instant::now() + Duration::from_secs(30);
                let sender = loop {
                    match TcpStream::connect(("127.0.0.1", port)) {
                        Ok(s) => break s,
                        Err(_) if Instant::now() < deadline => {
                            thread::sleep(Duration::from_millis(50))
                        }
                        Err(e) => return Err(e).context("nothing listens on the port"),
                    }
                };
                (Some(sender), None)
            }
        };
        if let Some(s) = &sender {
            s.set_nonblocking(true)?;
        }
        Ok(Self {
            sender,
            _receiver: receiver,
        })
    }

    /// Writes up to 1 MiB; the bytes the kernel took (fewer once both buffers are full).
    fn write_mib(&mut self) -> Result<usize> {
        use std::io::Write as _;
        let Some(sender) = self.sender.as_mut() else {
            return Ok(0); // the receiving end only holds
        };
        let chunk = [0x5au8; 64 << 10];
        let mut written = 0;
        while written < MIB {
            match sender.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(written)
    }
}

/// Touches `t.mib` MiB (anonymous, shmem, or socket buffers) at its rate; the bytes touched, and
/// the connections to keep open while the thread holds them.
fn run_toucher(t: &Toucher) -> Result<(usize, Option<UnreadConnection>)> {
    if let Some(role) = t.sock {
        let mut conn = UnreadConnection::open(role)?;
        let start = Instant::now();
        let (mut steps, mut bytes) = (0usize, 0usize);
        while t.mib == 0 || steps < t.mib {
            let n = conn.write_mib()?;
            bytes += n;
            steps += 1;
            if n == 0 {
                break; // both buffers full: the kernel takes no more
            }
            let due = Duration::from_secs_f64(steps as f64 / t.rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
        return Ok((bytes, Some(conn)));
    }
    let start = Instant::now();
    let mut done = 0usize;
    let mut maps = Vec::new();
    let in_guest = GUEST_RAM.get().is_some() && is_vcpu_name(&t.name);
    while t.mib == 0 || done < t.mib {
        if in_guest {
            if touch_guest_mib().is_none() {
                break;
            }
        } else {
            let p = if t.shmem {
                touch_one_shmem_mib()?
            } else {
                touch_one_mib()?
            };
            if t.free {
                maps.push(p);
            }
        }
        done += 1;
        let due = Duration::from_secs_f64(done as f64 / t.rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
    for p in maps {
        // SAFETY: `p` is a MIB-sized mapping this thread made and nothing else refers to.
        unsafe { libc::munmap(p, MIB) };
    }
    Ok((done * MIB, None))
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// Joins `cgroup` (full path), names the process, runs the touchers, then holds the memory until
/// killed. Prints `touched TID NAME BYTES` per thread when it is done, for the tests.
pub fn run(
    process_name: &str,
    cgroup: Option<&str>,
    touchers: &[Toucher],
    hold_secs: u64,
    start_after: Duration,
    guest_ram_mib: usize,
) -> Result<()> {
    // Named first, so that every charge in the cgroup is made under the final name.
    set_current_thread_name(process_name);
    // No transparent huge pages anywhere in this process: a thread's stack that happens to
    // start on a 2 MiB boundary takes one whole (seen: virtlogd charged 12 MiB + 2052 KiB in
    // the kernel matrix), and each thread's charge is checked against what it touched.
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process; its result is advisory.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if let Some(cg) = cgroup {
        std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("cannot join cgroup {cg}"))?;
    }
    if guest_ram_mib > 0 {
        map_guest_ram(guest_ram_mib)?;
    }
    thread::sleep(start_after);
    let handles: Vec<_> = touchers
        .iter()
        .cloned()
        .map(|t| {
            thread::Builder::new()
                .name(t.name.clone())
                .spawn(move || -> Result<()> {
                    set_current_thread_name(&t.name);
                    let (bytes, conn) = run_toucher(&t)?;
                    println!("touched {} {} {bytes}", gettid(), t.name);
                    std::io::stdout().flush().ok();
                    if t.free || conn.is_some() {
                        // A thread that freed lives on (like a sidecar's), so its totals stay.
                        thread::sleep(Duration::from_secs(hold_secs));
                    }
                    Ok(())
                })
        })
        .collect::<Result<_, _>>()
        .context("cannot start threads")?;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("a workload thread panicked"),
        }
    }
    thread::sleep(Duration::from_secs(hold_secs));
    Ok(())
}

/// How to start a workload process: the demo, the tests and the benchmarks all spawn
/// `oomtrace workload` this way.
#[derive(Clone, Debug, Default)]
pub struct Spec<'a> {
    pub process: &'a str,
    pub cgroup: &'a str,
    /// `NAME=MIB@RATE` per thread.
    pub threads: &'a [&'a str],
    pub hold_secs: u64,
    pub start_after_secs: f64,
    /// Dress the command line as another program's: argv[0], and options after `--`.
    pub arg0: Option<&'a str>,
    pub extra: &'a [&'a str],
    /// A qemu stand-in's guest RAM (MiB, 0: none): one mapping its vCPU threads write into;
    /// `extra` should say `-m <MiB>M` so that oomtrace finds it.
    pub guest_ram_mib: usize,
}

impl Spec<'_> {
    /// The command for `exe` (an oomtrace binary); stdio is left to the caller.
    pub fn command(&self, exe: &std::path::Path) -> std::process::Command {
        let mut cmd = std::process::Command::new(exe);
        if let Some(a) = self.arg0 {
            std::os::unix::process::CommandExt::arg0(&mut cmd, a);
        }
        cmd.args([
            "workload",
            "--process",
            self.process,
            "--cgroup",
            self.cgroup,
        ])
        .args(["--hold", &self.hold_secs.to_string()])
        .args(["--start-after", &self.start_after_secs.to_string()]);
        if self.guest_ram_mib > 0 {
            cmd.args(["--guest-ram", &self.guest_ram_mib.to_string()]);
        }
        for t in self.threads {
            cmd.args(["--thread", t]);
        }
        if !self.extra.is_empty() {
            cmd.arg("--").args(self.extra);
        }
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toucher_spec_parses_names_with_slashes_and_spaces() {
        let t = parse_toucher("CPU 0/KVM=0@40").ok();
        assert_eq!(
            t,
            Some(Toucher {
                name: "CPU 0/KVM".into(),
                mib: 0,
                rate: 40.0,
                free: false,
                shmem: false,
                sock: None,
            })
        );
        assert!(parse_toucher("virtlogd=12@400/free").is_ok_and(|t| t.free && t.rate == 400.0));
        assert!(parse_toucher("v=8@10/shmem").is_ok_and(|t| t.shmem && !t.free && t.rate == 10.0));
        assert!(parse_toucher("v=8@10/huge").is_err());
        assert!(parse_toucher("p=8@40/sock").is_ok_and(|t| t.sock == Some(Sock::Pair)));
        assert!(
            parse_toucher("p=8@40/sock-rx:5001").is_ok_and(|t| t.sock == Some(Sock::Receive(5001)))
        );
        assert!(
            parse_toucher("p=8@40/sock-tx:5001").is_ok_and(|t| t.sock == Some(Sock::Send(5001)))
        );
        assert!(parse_toucher("p=8@40/sock-tx:x").is_err());
        assert!(parse_toucher("IO iothread1=16").is_err());
        assert!(parse_toucher("=1@1").is_err());
        assert!(parse_toucher("x=1@0").is_err());
        assert!(parse_toucher("x=-1@1").is_err());
    }
}
