use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use oomtrace::{
    collector::{self, Config, RecordTo, Target},
    demo, doctor, explain,
    kubevirt::{
        budget,
        cmdline::{VmFacts, parse_size},
    },
    offline::{self, ExportFormat},
    output,
    render::By,
    workload,
};

fn target_of(cgroup: Option<String>, pid: Option<u32>) -> Target {
    match (cgroup, pid) {
        (Some(c), _) => Target::Cgroup(c),
        (None, Some(p)) => Target::Pid(p),
        (None, None) => Target::All,
    }
}

/// A duration as people type it: "500ms", "5s", "10m", "1h 30m", or bare seconds ("90", "0.5").
fn duration_value(s: &str) -> Result<Duration, String> {
    let parsed = match s.trim().parse::<f64>() {
        Ok(secs) if secs >= 0.0 && secs.is_finite() => Duration::try_from_secs_f64(secs).ok(),
        Ok(_) => None,
        Err(_) => s
            .trim()
            .parse::<jiff::SignedDuration>()
            .ok()
            .and_then(|d| Duration::try_from(d).ok()),
    };
    parsed.ok_or_else(|| format!("{s:?} is not a duration (e.g. 500ms, 30s, 10m, or seconds)"))
}

/// `duration_value`, more than zero.
fn positive_duration_value(s: &str) -> Result<Duration, String> {
    match duration_value(s)? {
        d if d.is_zero() => Err(format!("{s:?}: must be more than zero")),
        d => Ok(d),
    }
}

fn positive_flush(v: i64) -> Result<i64> {
    if v <= 0 {
        anyhow::bail!("--flush-bytes must be > 0");
    }
    Ok(v)
}

/// The KubeVirt overhead constants by name, and a sane ratio.
fn budget_profile(name: &str, ratio: f64) -> Result<budget::Constants> {
    if !(ratio > 0.0 && ratio.is_finite()) {
        anyhow::bail!("--overhead-ratio must be a positive number");
    }
    match budget::PROFILES.iter().find(|p| p.name == name) {
        Some(p) => Ok(*p),
        None => {
            let names: Vec<&str> = budget::PROFILES.iter().map(|p| p.name).collect();
            anyhow::bail!(
                "--kubevirt {name:?} is unknown; use one of {}",
                names.join(", ")
            )
        }
    }
}

/// "1948Mi", "16G", "2048M", plain bytes.
fn parse_size_arg(s: &str) -> Option<u64> {
    parse_size(s, 1)
}

#[derive(Parser)]
#[command(
    name = "oomtrace",
    version,
    about = "Which thread charges memory to which memory cgroup, and who the OOM killer hit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `tail` and `record` trace, and how.
#[derive(clap::Args)]
struct TraceArgs {
    /// Watch this memory cgroup and everything below it (as the kernel prints it, or a full path).
    #[arg(long, conflicts_with = "pid")]
    cgroup: Option<String>,
    /// Watch the memory cgroup of this process and show only its threads.
    #[arg(long)]
    pid: Option<u32>,
    /// Stop after this long (e.g. 30s, 10m; bare numbers are seconds).
    #[arg(long, value_parser = positive_duration_value)]
    duration: Option<Duration>,
    /// Bytes a thread charges before a record is sent (smaller: more lines, more cost).
    #[arg(long, default_value_t = 256 * 1024)]
    flush_bytes: i64,
    /// Use only this tier where a hook has it (default: fentry, else kprobe, else tracepoint).
    #[arg(long, value_enum)]
    tier: Option<oomtrace::bpf::Tier>,
}

impl TraceArgs {
    /// The collector's configuration for what and how to trace; the command adds the rest.
    fn config(self) -> Result<Config> {
        Ok(Config {
            target: target_of(self.cgroup, self.pid),
            duration: self.duration,
            flush_bytes: positive_flush(self.flush_bytes)?,
            tier: self.tier,
            least_privilege: true,
            ..Config::default()
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Stream charges, reclaim and OOM kills live, one line per event.
    Tail {
        #[command(flatten)]
        trace: TraceArgs,
        /// Replay a capture instead of tracing (no root needed).
        #[arg(long, conflicts_with_all = ["cgroup", "pid"])]
        from: Option<PathBuf>,
        /// With --from: replay at this speed (1 = as recorded); default: as fast as possible.
        #[arg(long, requires = "from")]
        speed: Option<f64>,
        /// JSON Lines instead of text.
        #[arg(long)]
        json: bool,
        /// Also print, every --every, each memcg's headroom and growth by class, process or
        /// thread.
        #[arg(long, value_enum)]
        by: Option<By>,
        #[arg(long, default_value = "5s", value_parser = positive_duration_value)]
        every: Duration,
        /// KubeVirt overhead constants for the budget: kubevirt-1.4+, kubevirt-1.1, kubevirt-0.54.
        #[arg(long, default_value = "kubevirt-1.4+")]
        kubevirt: String,
        /// additionalGuestMemoryOverheadRatio in force (Harvester >= 1.4 defaults to 1.5).
        #[arg(long, default_value_t = 1.0)]
        overhead_ratio: f64,
    },
    /// The node's pod memory cgroups at a glance, live or from a capture: usage against the
    /// limit (guest RAM and overhead), growth, time to the limit, each pod's classes, processes
    /// and threads, and every OOM kill with its post-mortem. Needs a terminal.
    Top {
        /// Watch this memory cgroup and everything below it.
        #[arg(long, conflicts_with = "pid")]
        cgroup: Option<String>,
        /// Watch the memory cgroup of this process.
        #[arg(long)]
        pid: Option<u32>,
        /// Replay a capture instead of tracing (no root needed): pause, step, seek.
        #[arg(long, conflicts_with_all = ["cgroup", "pid"])]
        from: Option<PathBuf>,
        /// With --from: start this far into the capture (e.g. 90s), paused.
        #[arg(long, requires = "from", value_parser = duration_value)]
        at: Option<Duration>,
        /// Time between screens.
        #[arg(long, default_value = "1s", value_parser = positive_duration_value)]
        every: Duration,
    },
    /// Trace like `tail` and write everything to a capture file, for `report` and `export` later.
    Record {
        /// The capture file (`-`: standard output, when it is not a terminal).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        #[command(flatten)]
        trace: TraceArgs,
        /// Rotate when the file reaches this size (e.g. 256M); keeps --keep older files.
        #[arg(long)]
        max_size: Option<String>,
        #[arg(long, default_value_t = 4)]
        keep: usize,
        /// The final summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay captures (rotated files oldest first) and show OOM post-mortems, the state at the
    /// end or at --at, and the summary. No root or BPF needed.
    Report {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
        /// This far after the capture's start (e.g. 90s, 2m): show the state then.
        #[arg(long, value_parser = duration_value)]
        at: Option<Duration>,
        /// With --at: also list every change of this long before it.
        #[arg(long, requires = "at", value_parser = duration_value)]
        window: Option<Duration>,
        /// Also show the state every this long of capture time.
        #[arg(long, value_parser = positive_duration_value)]
        every: Option<Duration>,
        #[arg(long, value_enum, default_value = "class")]
        by: By,
    },
    /// Convert a capture: JSON Lines or CSV (tail --json's field names), or a Perfetto trace.
    Export {
        file: PathBuf,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Output file (default, or `-`: standard output; perfetto only into a file or a pipe).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// Make a VM-pod-shaped memory cgroup, run a qemu-named workload and a memhold sidecar in it,
    /// and trace them until the memcg OOM killer strikes.
    Demo {
        #[arg(long)]
        json: bool,
    },
    /// Find the kernel's OOM reports in a log (dmesg, journalctl, syslog) and explain them.
    Explain {
        /// Log file, or "-" for standard input. Default: the running kernel's log.
        file: Option<String>,
        #[arg(long)]
        json: bool,
        /// The VM's guest memory (memory.guest), e.g. 1948Mi or 16G: weighs overhead against it.
        #[arg(long)]
        guest_memory: Option<String>,
        /// The VM's vCPU count (for KubeVirt's per-vCPU overhead).
        #[arg(long)]
        vcpus: Option<u32>,
        /// KubeVirt overhead constants: kubevirt-1.4+, kubevirt-1.1 or kubevirt-0.54.
        #[arg(long, default_value = "kubevirt-1.4+")]
        kubevirt: String,
        /// additionalGuestMemoryOverheadRatio in force (Harvester >= 1.4 defaults to 1.5).
        #[arg(long, default_value_t = 1.0)]
        overhead_ratio: f64,
    },
    /// Always on, for every node (a DaemonSet): a flight recorder in DIR, every OOM kill kept
    /// in DIR/kills with its post-mortem and a capture around it, one JSON line per kill on
    /// stdout, Prometheus metrics on --listen.
    Agent {
        /// Where the flight recorder and the kills are kept (made 0700).
        #[arg(long, default_value = "/var/lib/oomtrace")]
        dir: PathBuf,
        /// Address for /metrics, /healthz and /readyz.
        #[arg(long, default_value = "127.0.0.1:9747")]
        listen: std::net::SocketAddr,
        /// Allow a --listen address other than loopback (a DaemonSet that Prometheus scrapes
        /// on the pod's IP): the metrics name the node's pods and VMs.
        #[arg(long)]
        listen_beyond_loopback: bool,
        /// Disk the flight recorder may use (its rotated files together).
        #[arg(long, default_value = "256M")]
        max_disk: String,
        /// Kill directories kept, oldest removed first.
        #[arg(long, default_value_t = 100)]
        keep_kills: usize,
        /// How much before a kill its capture starts (e.g. 10m, 90s).
        #[arg(long, default_value = "10m", value_parser = duration_value)]
        before: Duration,
        /// How much after a kill its capture ends.
        #[arg(long, default_value = "30s", value_parser = duration_value)]
        after: Duration,
        /// Watch only this memory cgroup and below (default: every memory cgroup).
        #[arg(long)]
        cgroup: Option<String>,
        /// A thread's charge record is sent when its total moved by this many bytes.
        #[arg(long, default_value_t = 256 * 1024)]
        flush_bytes: i64,
        /// Where the container runtime keeps its bundles, for pod names (repeatable; default:
        /// containerd's, RKE2/k3s's and CRI-O's usual places).
        #[arg(long = "runtime-state")]
        runtime_state: Vec<PathBuf>,
    },
    /// What this kernel offers and which programs oomtrace will use.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// (internal) What the programs need from the kernel's BTF, as JSON.
    #[command(hide = true)]
    KernelBtf { btf: PathBuf },
    /// (internal) The workload the demo and the tests run.
    #[command(hide = true)]
    Workload {
        #[arg(long)]
        process: String,
        #[arg(long)]
        cgroup: Option<String>,
        /// NAME=MIB@RATE; MIB 0 = until killed.
        #[arg(long = "thread")]
        threads: Vec<String>,
        #[arg(long, default_value_t = 3600)]
        hold: u64,
        /// Seconds to wait (in the cgroup, named) before touching anything.
        #[arg(long, default_value_t = 0.0)]
        start_after: f64,
        /// Map this many MiB as guest RAM; threads named like vCPUs write into it.
        #[arg(long, default_value_t = 0)]
        guest_ram: usize,
        /// Ignored: lets the process carry a qemu-like command line.
        #[arg(last = true)]
        ignored: Vec<String>,
    },
}

fn run(cli: Cli) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Tail {
            from: Some(file),
            speed,
            json,
            by,
            every,
            ..
        } => {
            offline::tail_from(&file, json, speed, by, every, &mut out)?;
        }
        Command::Record {
            output,
            trace,
            max_size,
            keep,
            json,
        } => {
            let max_size = match max_size {
                Some(m) => Some(parse_size_arg(&m).filter(|v| *v > 0).ok_or_else(|| {
                    anyhow::anyhow!("--max-size {m:?} is not a size (e.g. 256M, 1G)")
                })?),
                None => None,
            };
            // A capture on standard output: the summary goes to standard error.
            let capture_on_stdout = oomtrace::private_file::is_stdout(&output);
            let cfg = Config {
                json,
                charges: false,
                record: Some(RecordTo {
                    path: output,
                    max_size,
                    keep,
                    resume: false,
                }),
                status_line: true,
                ..trace.config()?
            };
            let rt = runtime()?;
            let summary = rt.block_on(collector::run(cfg, &mut std::io::sink(), |started| {
                eprintln!(
                    "oomtrace: recording; {}; Ctrl-C to stop",
                    started.privileges_line()
                );
            }))?;
            if capture_on_stdout {
                output::write_summary(&mut std::io::stderr(), json, &summary)?;
            } else {
                output::write_summary(&mut out, json, &summary)?;
            }
            if let Some(e) = &summary.capture_error {
                anyhow::bail!("{e}");
            }
        }
        Command::Report {
            files,
            json,
            at,
            window,
            every,
            by,
        } => {
            let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
            offline::report(
                &offline::ReportOptions {
                    files,
                    json,
                    at: secs(at),
                    window: secs(window),
                    every: secs(every),
                    by,
                },
                &mut out,
            )?;
        }
        Command::Export {
            file,
            format,
            output,
        } => match output {
            Some(path) if oomtrace::private_file::is_stdout(&path) => {
                let binary = format == ExportFormat::Perfetto;
                let mut f = std::io::BufWriter::new(oomtrace::private_file::stdout(binary)?);
                offline::export(&file, format, &mut f)?;
                f.flush()?;
            }
            Some(path) => {
                let mut f = std::io::BufWriter::new(oomtrace::private_file::create(&path)?);
                offline::export(&file, format, &mut f)?;
                f.flush()?;
            }
            None if format == ExportFormat::Perfetto => {
                anyhow::bail!("a Perfetto trace is binary: give -o FILE (or -o - into a pipe)")
            }
            None => offline::export(&file, format, &mut out)?,
        },
        Command::Tail {
            trace,
            json,
            by,
            every,
            kubevirt,
            overhead_ratio,
            from: None,
            speed: _,
        } => {
            let cfg = Config {
                json,
                by,
                every,
                budget: (budget_profile(&kubevirt, overhead_ratio)?, overhead_ratio),
                ..trace.config()?
            };
            let rt = runtime()?;
            let summary = rt.block_on(collector::run(cfg, &mut out, |started| {
                if json {
                    // Tells a reader (and the tests) that tracing is live, and through which hooks.
                    let start = serde_json::json!({
                        "type": "start",
                        "hooks": started.choices,
                        "capabilities": started.privileges,
                    });
                    println!("{start}");
                } else {
                    let used: Vec<String> = started
                        .choices
                        .iter()
                        .filter(|c| !c.tier.is_off())
                        .map(|c| format!("{} {}", c.tier, c.target))
                        .collect();
                    eprintln!(
                        "oomtrace: tracing via {}; {}; Ctrl-C to stop",
                        used.join(", "),
                        started.privileges_line()
                    );
                }
            }))?;
            output::write_summary(&mut out, json, &summary)?;
        }
        Command::Top {
            cgroup,
            pid,
            from,
            at,
            every,
        } => {
            // The drawing thread writes to the terminal: stdout must not stay locked here.
            drop(out);
            oomtrace::top::run(oomtrace::top::Options {
                target: target_of(cgroup, pid),
                from,
                every,
                at,
            })?;
        }
        Command::Demo { json } => {
            let rt = runtime()?;
            let summary = rt.block_on(demo::run(json, &mut out))?;
            output::write_summary(&mut out, json, &summary)?;
        }
        Command::Explain {
            file,
            json,
            guest_memory,
            vcpus,
            kubevirt,
            overhead_ratio,
        } => {
            let source = match file.as_deref() {
                None => explain::Source::KernelLog,
                Some("-") => explain::Source::Stdin,
                Some(p) => explain::Source::File(p.to_string()),
            };
            let guest_memory = match guest_memory {
                Some(g) => Some(parse_size_arg(&g).ok_or_else(|| {
                    anyhow::anyhow!("--guest-memory {g:?} is not a size (e.g. 1948Mi, 16G)")
                })?),
                None => None,
            };
            let constants = budget_profile(&kubevirt, overhead_ratio)?;
            let opts = explain::Options {
                source,
                json,
                hints: explain::Hints {
                    vm: VmFacts {
                        guest_memory,
                        vcpus,
                        ..Default::default()
                    },
                    constants: Some(constants),
                    ratio: Some(overhead_ratio),
                },
            };
            explain::run(&opts, &mut out)?;
        }
        Command::KernelBtf { btf } => {
            let items = oomtrace::kernel_btf::KernelBtf::from_btf(&btf)?;
            writeln!(out, "{}", serde_json::to_string(&items)?)?;
        }
        Command::Agent {
            dir,
            listen,
            listen_beyond_loopback,
            max_disk,
            keep_kills,
            before,
            after,
            cgroup,
            flush_bytes,
            runtime_state,
        } => {
            if !listen.ip().is_loopback() && !listen_beyond_loopback {
                anyhow::bail!(
                    "--listen {listen} is not a loopback address: the metrics would be open to \
                     the network; add --listen-beyond-loopback if that is meant"
                );
            }
            let max_disk = parse_size_arg(&max_disk)
                .filter(|v| *v >= 1 << 20)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--max-disk {max_disk:?} is not a size of at least 1M (e.g. 256M, 1G)"
                    )
                })?;
            let cfg = oomtrace::agent::AgentConfig {
                dir,
                listen,
                max_disk,
                keep_kills: keep_kills.max(1),
                before,
                after,
                target: target_of(cgroup, None),
                flush_bytes: positive_flush(flush_bytes)?,
                runtime_roots: runtime_state,
            };
            drop(out);
            runtime()?.block_on(oomtrace::agent::run(cfg))?;
        }
        Command::Doctor { json } => doctor::print(&mut out, &doctor::gather(), json)?,
        Command::Workload {
            process,
            cgroup,
            threads,
            hold,
            start_after,
            guest_ram,
            ignored: _,
        } => {
            if !(start_after >= 0.0 && start_after.is_finite()) {
                anyhow::bail!("--start-after must be a number of seconds >= 0");
            }
            let touchers = threads
                .iter()
                .map(|t| workload::parse_toucher(t))
                .collect::<Result<Vec<_>>>()?;
            drop(out);
            workload::run(
                &process,
                cgroup.as_deref(),
                &touchers,
                hold,
                Duration::from_secs_f64(start_after),
                guest_ram,
            )?;
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stdout().flush();
            // An error can quote a path or name another tenant chose.
            let e = format!("{e:#}");
            eprintln!("oomtrace: {}", oomtrace::visible::Visible(&e));
            ExitCode::FAILURE
        }
    }
}
